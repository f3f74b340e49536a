"""The anatomy of one phantom: its drawn parameters, the landmarks and smooth fields derived from
them, and the order in which the organs are painted (what is painted first wins where organs
compete; most organs paint only into free visceral fat, so neighbours press on each other)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from train.phantoms import abdomen, body, heart, liver, pelvis
from train.phantoms.canvas import Box, Canvas
from train.phantoms.fields import Field
from train.phantoms.tissues import CLASSIC_LESION_BASE, LESION_BASE


class Anatomy:
    """Holds the drawn parameters and the derived body-frame landmarks, and paints them."""

    def __init__(
        self,
        body: dict,
        organs: dict,
        lesions: list,
        rngs: dict[str, np.random.Generator],
        anatomy: int = 1,
        heart: dict | None = None,
        disease: dict | None = None,
    ):
        """`heart` and `disease` are anatomy 2's draws (parameters.draw_heart, resolve_disease)."""
        self.b, self.o, self.lesions, self.rngs = body, organs, lesions, rngs
        self.version, self.heart, self.disease = anatomy, heart, disease
        self.a = body["half_width_mm"]
        self.ba, self.bp = body["half_depth_ant_mm"], body["half_depth_post_mm"]
        mus, mus_p = body["muscle_mm"], body["muscle_post_mm"]
        # Cavity (inner surface of the muscle wall) half-axes.
        self.A = self.a - body["fat_lat_mm"] - mus
        self.BA = self.ba - body["fat_ant_mm"] - mus
        self.BP = self.bp - body["fat_post_mm"] - mus_p
        self.v_spine = self.bp - body["fat_post_mm"] - body["spine_depth_mm"]
        self.vr = body["vertebra_radii_mm"]
        # The porta hepatis: where the portal vein enters the liver and its branches start.
        self.hilum = (-0.22 * self.A, -0.05 * self.BA, -85.0)
        # Smooth random fields, drawn once (grid independent).
        r = rngs["fields"]
        self.f_liver = Field(r, (-250, -250, -260), (250, 250, 60), organs["liver_deform_step_mm"])
        self.f_organ = Field(r, (-300, -300, -450), (300, 300, 300), 40.0)
        self.f_bowel1 = Field(r, (-300, -300, -450), (300, 300, 0), 22.0)
        self.f_bowel2 = Field(r, (-300, -300, -450), (300, 300, 0), 18.0)
        self.f_texture = Field(r, (-300, -300, -450), (300, 300, 300), 25.0)
        self.f_fine = Field(r, (-300, -300, -450), (300, 300, 300), 9.0)
        # (box, codes, texture name) where the scanner adds a smooth uneven enhancement.
        self.texture_boxes: list[tuple[Box, tuple[int, ...], str]] = []
        self.lesion_base = CLASSIC_LESION_BASE
        # The liver's shape against anatomy 1's (1 and 0: unchanged).
        self.liver_size = self.right_lobe_size = self.caudate_size = 1.0
        self.left_lobe_lift_mm = self.nodularity = 0.0
        # How far below the diaphragm sheet the liver stops: anatomy 1 leaves a gap of fat.
        self.liver_gap_mm = body["diaphragm_mm"]
        # Muscle between the cavity and the ribs' inner surface (anatomy 3 draws it).
        self.rib_gap_mm = body.get("rib_gap_mm", 1.0)
        if anatomy >= 2:
            self._anatomy2(rngs["fields2"])

    def _anatomy2(self, r: np.random.Generator) -> None:
        """Anatomy 2's landmarks: the liver meets the diaphragm (the left lobe reaches up under
        the heart), and the liver disease's shape; its own fields."""
        d = self.disease
        self.lesion_base = LESION_BASE
        self.liver_gap_mm = 0.0
        self.left_lobe_lift_mm = 15.0
        if d["cirrhosis"]:  # small, the right lobe shrinking most, the caudate lobe enlarged
            self.liver_size = d["cirrhosis_scale"]
            self.right_lobe_size = d["right_lobe_atrophy"]
            self.caudate_size = d["caudate_scale"]
            self.nodularity = d["nodularity"]
        elif d["hepatomegaly"]:
            self.liver_size = d["hepatomegaly_scale"]
        self.f_nodules = Field(r, (-250, -250, -260), (250, 250, 60), 7.0)
        self.f_lesion = Field(r, (-250, -250, -260), (250, 250, 60), 6.0)

    def paint(self, c: Canvas) -> None:
        """Paint every organ onto the canvas, in order of priority."""
        self.prepare(c)
        body.paint_body(self, c)
        body.paint_thorax(self, c)
        if self.version == 1:
            heart.paint_classic_heart(self, c)
        else:
            heart.paint_heart(self, c)
        body.paint_lung_vessels(self, c)
        body.paint_spine(self, c)
        body.paint_ribs(self, c)
        abdomen.paint_great_vessels(self, c)
        abdomen.paint_kidneys(self, c)
        abdomen.paint_spleen(self, c)
        abdomen.paint_pancreas(self, c)
        abdomen.paint_stomach(self, c)
        abdomen.paint_gallbladder(self, c)
        if self.version >= 2 and self.disease["ascites"]:
            liver.paint_ascites_rim(self, c)  # before the liver, which it pushes off the wall
        liver.paint_liver(self, c)
        liver.paint_liver_vessels(self, c)
        if self.version >= 2 and self.disease["biliary_dilatation"]:
            liver.paint_bile_ducts(self, c)
        liver.paint_lesions(self, c)
        if self.version >= 2 and self.disease["ascites"]:
            liver.paint_perihepatic_ascites(self, c)
        if self.version >= 3:  # before the bowel, which fills the fat that is left
            pelvis.paint_bladder(self, c)
            pelvis.paint_true_pelvis(self, c)
        abdomen.paint_colon(self, c)
        abdomen.paint_small_bowel(self, c)
        body.paint_pelvis(self, c)

    # -- body cross-section and diaphragm, the frame every organ is placed in --------------------
    def _rho(
        self, u: np.ndarray, v: np.ndarray, harm: np.ndarray, insets: Sequence[float]
    ) -> np.ndarray:
        """Normalised superellipse radius (< 1 inside), 2D, of the body outline shrunk by insets
        (lateral, anterior, posterior, mm) and modulated by the angular harmonics `harm`."""
        b = self.b
        inset_lat, inset_ant, inset_post = insets
        au = np.abs(u) / np.float32(self.a - inset_lat)
        out = np.empty_like(u)
        for sel, depth, p in (
            (v <= 0, self.ba - inset_ant, b["exponent"]),
            (v > 0, self.bp - inset_post, b["exponent_post"]),
        ):
            p = np.float32(p)
            out[sel] = (au[sel] ** p + (np.abs(v[sel]) / np.float32(depth)) ** p) ** (1 / p)
        return out / harm

    def prepare(self, c: Canvas) -> None:
        """Body-outline and diaphragm maps over the whole canvas plane, computed once and sliced."""
        b = self.b
        skin = b["skin_mm"]
        insets = {
            "body": (0.0, 0.0, 0.0),
            "skin": (skin, skin, skin),
            "fat": (b["fat_lat_mm"], b["fat_ant_mm"], b["fat_post_mm"]),
            "cavity": (
                b["fat_lat_mm"] + b["muscle_mm"],
                b["fat_ant_mm"] + b["muscle_mm"],
                b["fat_post_mm"] + b["muscle_post_mm"],
            ),
        }
        theta = np.arctan2(c.v, c.u)
        harm = np.ones_like(c.u)
        for k, (amp, ph) in enumerate(b["shape_harmonics"]):
            harm += np.float32(amp) * np.cos((k + 2) * theta + np.float32(ph))
        self.maps = {name: self._rho(c.u, c.v, harm, ins) for name, ins in insets.items()}
        self.maps["diaphragm"] = self.diaphragm(c.u, c.v)
        inside = self.maps["cavity"] < 1.2
        self.zd_min = float(self.maps["diaphragm"][inside].min()) - 5.0 if inside.any() else 0.0

    def at(self, box: Box, name: str) -> np.ndarray:
        """A prepared 2D map (body, skin, fat, cavity outlines as normalised radius; diaphragm w) on a box."""
        return self.maps[name][box.sl[1], box.sl[2]]

    def z_scale(self, w: np.ndarray) -> np.ndarray:
        """Per-slice scale of the body outline (thorax to pelvis variation), (nz, 1, 1)."""
        s = np.ones_like(w)
        for amp, period, ph in self.b["z_profile"]:
            s = s + amp * np.cos(2 * math.pi * w / period + ph)
        return s.astype(np.float32)

    def diaphragm(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Height w (mm) of the diaphragm over (u, v): right dome (top at w = 0), left dome, tendon.

        Each dome is flat on top and drops steeply towards the chest wall (height = -drop * d^p,
        d = 1 at the wall), which leaves the lungs a thin posterior and lateral rim at the liver's
        upper levels, as in a real CT; the central tendon under the heart is a lower plateau.
        """
        b = self.b
        cu = 0.45 * self.A
        post = v > 0
        rv = np.where(post, self.BP, self.BA)
        drop_v = np.where(post, b["dome_drop_post_mm"], b["dome_drop_ant_mm"])
        domes = []
        for side, top in ((-1, 0.0), (1, -b["dome_left_drop_mm"])):
            du2 = ((u - side * cu) / (0.55 * self.A)) ** 2
            dv2 = (v / rv) ** 2
            d2 = du2 + dv2
            drop = (du2 * b["dome_drop_lat_mm"] + dv2 * drop_v) / np.maximum(d2, 1e-6)
            domes.append(top - drop * d2 ** (b["dome_power"] / 2))
        cd2 = ((u - 0.05 * self.A) / (0.3 * self.A)) ** 2 + (
            (v + 0.15 * self.BA) / (0.6 * self.BA)
        ) ** 2
        tendon = -b["tendon_drop_mm"] - 60.0 * cd2**2
        return np.maximum(np.maximum(domes[0], domes[1]), tendon)

    def clip_below(self, box: Box) -> np.ndarray:
        """Inside the cavity and under the diaphragm sheet, (nz, ny, nx) bool."""
        zd = self.at(box, "diaphragm")[None]
        cav = self.at(box, "cavity")[None] < self.z_scale(box.w) * 0.985
        return cav & (box.w < zd)

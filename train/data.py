"""Training data: find cases, bring them onto the model grid, and sample patches from them.

Sources (each case is a CT in HU and a liver mask):
  - "msd": a Medical Segmentation Decathlon task folder, `imagesTr/NAME.nii.gz` with
    `labelsTr/NAME.nii.gz` (Task03_Liver: 1 liver, 2 tumour);
  - "lits": the LiTS challenge layout, `volume-N.nii` with `segmentation-N.nii` anywhere below the
    folder (1 liver, 2 tumour);
  - "datalist": a JSON file, MSD's `dataset.json` or MONAI's datalist:
    `{"training": [{"image": ..., "label": ...}], "validation": [...]}` (or a bare list), paths
    relative to the JSON file; "validation" entries, when present, are the validation split;
  - synthetic phantoms (`train.phantoms.make_phantom`), by seed.

The liver is every voxel with label >= 1 (tumours are inside the liver). Every case goes through
`model_zoo.preprocessing.prepare` and `label_to_model_grid`, so training sees exactly the arrays the
service's network sees. Patches are sampled as nnU-Net does: a third of each batch (the last
samples, `round(batch * (1 - 0.33))` onwards) is centred on a random foreground voxel, the rest
anywhere; volumes smaller than the patch are padded with air.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch

from model_zoo.atomic_write import write_atomically
from model_zoo.card import InputContract
from model_zoo.preprocessing import (
    AIR_HU,
    PreparedVolume,
    hu_to_input_units,
    label_to_model_grid,
    prepare,
)
from train.classes import organ_classes, soft_targets

log = logging.getLogger(__name__)

DataFormat = Literal["msd", "lits", "datalist"]
DATA_FORMATS: tuple[str, ...] = ("msd", "lits", "datalist")
# Foreground positions kept per case for oversampling: enough to cover the liver, bounded memory.
_MAX_FOREGROUND_COORDS = 20_000
_NIFTI = re.compile(r"\.nii(\.gz)?$")


@dataclass(frozen=True)
class CaseSource:
    """Where a case comes from: image and label files, or a phantom seed."""

    name: str
    image: Path | None = None
    label: Path | None = None
    phantom_seed: int | None = None
    phantom_spacing_mm: float | None = None  # None: the phantom's own scanner grid (as real CT)
    # 1: the classic phantoms the bundled model learnt from; 2: the anatomy of real scans (heart,
    # chest-to-pelvis views, diseased livers); 3: 2 with muscle between the liver and bone. The
    # default keeps the recorded training chains exact.
    phantom_anatomy: int = 1
    # make_phantom's disease flags (anatomy 2 and 3) as (flag, value) pairs; empty: all drawn
    phantom_disease: tuple[tuple[str, bool | str | float], ...] = ()
    phantom_phase: str | None = None  # make_phantom's contrast phase; None: drawn
    split: Literal["training", "validation"] | None = None  # fixed by a datalist, else None
    organs: Path | None = None  # a label map of the organs (TotalSegmentator's classes) on the CT's grid

    def describe(self) -> str:
        """One line for logs: the file, or the phantom seed."""
        return str(self.image) if self.image is not None else f"phantom seed {self.phantom_seed}"


@dataclass(frozen=True)
class PreparedCase:
    """A case on the model grid: image float32 (D, H, W) normalised, label (D, H, W): uint8 0/1,
    or float32 liver fractions in [0, 1] under an antialiasing contract.

    foreground: (K, 3) int64 (d, h, w) indices of liver voxels (a random subset of at most
    20,000), for oversampling.
    organs: (D, H, W) uint8 classes of the liver's neighbours (`train.classes.organ_classes`,
    nearest neighbour), for a multi-class network; None where the case has no organ map.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    foreground: np.ndarray
    organs: np.ndarray | None = None


def _is_nifti(path: Path) -> bool:
    # MSD tarballs made on macOS carry "._NAME.nii.gz" resource forks: not images.
    return bool(_NIFTI.search(path.name)) and not path.name.startswith("._")


def _stem(path: Path) -> str:
    return _NIFTI.sub("", path.name)


def find_msd(folder: Path) -> list[CaseSource]:
    """Cases of an MSD task folder: imagesTr/X.nii.gz paired with labelsTr/X.nii.gz."""
    images, labels = folder / "imagesTr", folder / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise FileNotFoundError(f"{folder} is not an MSD task folder: it needs imagesTr/ and labelsTr/")
    cases = []
    for image in sorted(p for p in images.iterdir() if _is_nifti(p)):
        label = labels / image.name
        if not label.is_file():
            log.warning("MSD: no label for %s; skipped", image)
            continue
        cases.append(CaseSource(name=_stem(image), image=image, label=label))
    return cases


def find_lits(folder: Path) -> list[CaseSource]:
    """Cases of the LiTS layout: volume-N.nii[.gz] with segmentation-N.nii[.gz], anywhere below."""
    volumes = {}
    segmentations = {}
    for path in folder.rglob("*.nii*"):
        if not _is_nifti(path):
            continue
        match = re.fullmatch(r"(volume|segmentation)-(\d+)", _stem(path))
        if match:
            (volumes if match[1] == "volume" else segmentations)[int(match[2])] = path
    cases = []
    for number in sorted(volumes):
        if number not in segmentations:
            log.warning("LiTS: no segmentation-%d for %s; skipped", number, volumes[number])
            continue
        cases.append(
            CaseSource(name=f"lits-{number}", image=volumes[number], label=segmentations[number])
        )
    return cases


def find_datalist(path: Path) -> list[CaseSource]:
    """Cases of a JSON datalist (MSD dataset.json / MONAI); paths relative to the JSON's folder."""
    content = json.loads(path.read_text())
    groups = {"training": content} if isinstance(content, list) else content
    if not isinstance(groups, dict) or "training" not in groups:
        raise ValueError(f"{path}: a datalist is a list of {{image, label}} or has a 'training' list")
    cases = []
    for split in ("training", "validation"):
        for index, entry in enumerate(groups.get(split, [])):
            if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
                raise ValueError(f"{path}: {split}[{index}] needs 'image' and 'label' (got {entry!r})")
            image = (path.parent / entry["image"]).resolve()
            label = (path.parent / entry["label"]).resolve()
            organs = (path.parent / entry["organs"]).resolve() if "organs" in entry else None
            for what, file in (("image", image), ("label", label), ("organs", organs)):
                if file is not None and not (file.is_file() or (what == "image" and file.is_dir())):  # a folder: a DICOM series
                    raise FileNotFoundError(f"{path}: {split}[{index}] {what} {file} does not exist")
            cases.append(CaseSource(name=_stem(image), image=image, label=label, split=split, organs=organs))  # type: ignore[arg-type]
    return cases


def find_cases(path: str | Path, data_format: str) -> list[CaseSource]:
    """Every case at `path` in `data_format` ("msd", "lits" or "datalist"). Raises if none found."""
    path = Path(path)
    finders = {"msd": find_msd, "lits": find_lits, "datalist": find_datalist}
    if data_format not in finders:
        raise ValueError(f"unknown data format {data_format!r}; use one of {', '.join(DATA_FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    cases = finders[data_format](path)
    if not cases:
        raise FileNotFoundError(f"no {data_format} cases found under {path}")
    return cases


# The diseased liver real scans miss most (a small cirrhotic liver with HCC), for TrainConfig.sick_fraction.
SICK_LIVER: tuple[tuple[str, bool | str | float], ...] = (("cirrhosis", True), ("tumours", "hcc"))
# Heavy ascites around it (TrainConfig.ascites_fraction): a rim this thick, in mm. The drawn rim
# (log-uniform 4-30 mm) is over 20 mm in a fifth of ascitic livers; a liver inside 3.5 L of fluid
# (a 23 mm rim) was the held-out sick phantom the model lost entirely.
HEAVY_ASCITES_MM = (20.0, 40.0)


def sick_liver_in_ascites(rim_mm: float) -> tuple[tuple[str, bool | str | float], ...]:
    """SICK_LIVER inside heavy ascites, a rim of rim_mm."""
    return (*SICK_LIVER, ("ascites", True), ("ascites_mm", float(rim_mm)))


def _every(k: int, fraction: float) -> bool:
    """Whether item k is one of `fraction` of a run, spread evenly through it."""
    return math.floor((k + 1) * fraction) > math.floor(k * fraction)


def phantom_sources(
    count: int,
    first_seed: int = 0,
    spacing_mm: float | None = None,
    anatomy: int = 1,
    sick_fraction: float = 0.0,
    ascites_fraction: float = 0.0,
    native_fraction: float = 0.0,
) -> list[CaseSource]:
    """`count` synthetic phantoms with consecutive seeds.

    spacing_mm: draw them directly on an isotropic grid (fast, for tests); None keeps each
    phantom's own scanner grid (~0.8 x 0.8 x 1-5 mm, 512 wide), which `prepare` then resamples
    as it does a real CT.
    sick_fraction (anatomy 2): this fraction of them, spread evenly through the seeds, drawn with
    SICK_LIVER; ValueError outside [0, 1] or with anatomy 1.
    ascites_fraction: this fraction of the sick ones, spread evenly through them, inside heavy
    ascites (sick_liver_in_ascites, the rims spread over HEAVY_ASCITES_MM); ValueError outside
    [0, 1].
    native_fraction: this fraction of them, spread evenly through the seeds, scanned without
    contrast (make_phantom's phase "native"; the others keep their drawn phase). ValueError
    outside [0, 1].
    """
    fractions = (("sick_fraction", sick_fraction), ("ascites_fraction", ascites_fraction),
                 ("native_fraction", native_fraction))
    for name, value in fractions:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}")
    if sick_fraction and anatomy == 1:
        raise ValueError("sick_fraction needs anatomy 2 or 3: anatomy 1 draws no liver disease")
    sources, n_sick = [], 0
    lo, hi = HEAVY_ASCITES_MM
    for k, seed in enumerate(range(first_seed, first_seed + count)):
        name, disease = f"phantom-{seed}", ()
        if _every(k, sick_fraction):
            name, disease = name + "-cirrhosis-hcc", SICK_LIVER
            if _every(n_sick, ascites_fraction):
                # golden-ratio steps spread the rims over the range whatever the count
                rim = round(lo + (hi - lo) * ((n_sick * 0.6180339887) % 1.0), 1)
                name, disease = name + f"-ascites{rim:.0f}mm", sick_liver_in_ascites(rim)
            n_sick += 1
        phase = None
        if _every(k, native_fraction):
            name, phase = name + "-native", "native"
        sources.append(CaseSource(name=name, phantom_seed=seed, phantom_spacing_mm=spacing_mm,
                                  phantom_anatomy=anatomy, phantom_disease=disease, phantom_phase=phase))
    return sources


def split_cases(
    cases: Sequence[CaseSource], n_val: int, seed: int
) -> tuple[list[CaseSource], list[CaseSource]]:
    """(training, validation): the datalist's own split if it has one, else n_val held out at random."""
    fixed = [c for c in cases if c.split == "validation"]
    if fixed:
        return [c for c in cases if c.split != "validation"], fixed
    if n_val >= len(cases):
        raise ValueError(f"--val {n_val} leaves no training case out of {len(cases)}")
    order = np.random.default_rng(seed).permutation(len(cases))
    held = set(order[:n_val].tolist())
    return (
        [c for i, c in enumerate(cases) if i not in held],
        [c for i, c in enumerate(cases) if i in held],
    )


def read_liver_label(path: Path, like: sitk.Image) -> sitk.Image:
    """A label file as a uint8 liver mask (label >= 1), on the CT's geometry when the sizes agree.

    Some public labels (LiTS) carry headers that differ from their CT's by rounding; when the sizes
    match we trust the CT's geometry. Raises ValueError when the sizes differ.
    """
    label = sitk.ReadImage(str(path))
    if label.GetSize() != like.GetSize():
        raise ValueError(f"label {path} has size {label.GetSize()}, its CT {like.GetSize()}")
    liver = sitk.Cast(label >= 1, sitk.sitkUInt8)
    liver.CopyInformation(like)
    return liver


def load_case(source: CaseSource) -> tuple[sitk.Image, sitk.Image]:
    """(CT in HU, liver mask uint8 0/1) of a case, on the CT's own grid."""
    image, liver, _ = load_case_with_organs(source)
    return image, liver


def load_case_with_organs(source: CaseSource) -> tuple[sitk.Image, sitk.Image, sitk.Image | None]:
    """(CT in HU, liver mask uint8 0/1, organ label map or None) of a case, on the CT's own grid.

    The organ map is the phantom's tissue map (`train.organ_leaks.PHANTOM_GROUPS` reads it) or the
    datalist's `organs` file (TotalSegmentator's classes: `TOTALSEGMENTATOR_GROUPS`).
    """
    if source.phantom_seed is not None:
        from train.phantoms import make_phantom  # phantoms only when asked for

        spacing = source.phantom_spacing_mm
        phantom = make_phantom(
            source.phantom_seed, spacing_xyz_mm=None if spacing is None else (spacing,) * 3,
            anatomy=source.phantom_anatomy, disease=dict(source.phantom_disease) or None,
            phase=source.phantom_phase,
        )
        return phantom.ct, sitk.Cast(phantom.liver > 0, sitk.sitkUInt8), phantom.tissues
    if source.image is None or source.label is None:
        raise ValueError(f"case {source.name} has neither files nor a phantom seed")
    image = _read_dicom_folder(source.image) if source.image.is_dir() else sitk.ReadImage(str(source.image))
    organs = None
    if source.organs is not None:
        organs = sitk.ReadImage(str(source.organs))
        if organs.GetSize() != image.GetSize():
            raise ValueError(f"organ map {source.organs} has size {organs.GetSize()}, its CT {image.GetSize()}")
    return image, read_liver_label(source.label, image), organs


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """The one DICOM series in `folder`, in HU (GDCM reads JPEG 2000, as in the real sample)."""
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(folder))
    if not names:
        raise FileNotFoundError(f"no DICOM series in {folder}")
    reader.SetFileNames(names)
    return sitk.Cast(reader.Execute(), sitk.sitkFloat32)


def organ_classes_on_grid(organs: sitk.Image, source: CaseSource, prepared: PreparedVolume) -> np.ndarray:
    """A case's organ label map as uint8 neighbour classes on the model grid (nearest neighbour)."""
    from train.organ_leaks import PHANTOM_GROUPS, TOTALSEGMENTATOR_GROUPS

    groups = PHANTOM_GROUPS if source.phantom_seed is not None else TOTALSEGMENTATOR_GROUPS
    classes = sitk.GetImageFromArray(organ_classes(sitk.GetArrayViewFromImage(organs), groups))
    classes.CopyInformation(organs)
    resampled = sitk.Resample(classes, prepared.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(resampled)


def prepare_case(source: CaseSource, contract: InputContract, rng: np.random.Generator) -> PreparedCase:
    """Load a case and bring image, label (and organ classes, where it has an organ map) onto the
    contract's model grid."""
    image, liver, organs = load_case_with_organs(source)
    prepared = prepare(image, contract)
    label = label_to_model_grid(liver, prepared)  # uint8 0/1, or float32 liver fractions
    organ_grid = None if organs is None else organ_classes_on_grid(organs, source, prepared)
    foreground = np.argwhere(label > 0.5)
    if len(foreground) > _MAX_FOREGROUND_COORDS:
        foreground = foreground[rng.choice(len(foreground), _MAX_FOREGROUND_COORDS, replace=False)]
    if len(foreground) == 0:
        log.warning("case %s has no liver on the model grid; it gets random patches only", source.name)
    return PreparedCase(
        name=source.name,
        image=np.ascontiguousarray(prepared.array, dtype=np.float32),
        label=np.ascontiguousarray(label),
        foreground=foreground.astype(np.int64),
        organs=organ_grid,
    )


_REPO_ROOT = Path(__file__).resolve().parents[1]
# The code that decides what a prepared case holds: a change to any of it makes old caches stale.
_PREPARATION_CODE = ("model_zoo/preprocessing.py", "train/data.py", *sorted(
    path.relative_to(_REPO_ROOT).as_posix() for path in (_REPO_ROOT / "train" / "phantoms").glob("*.py")
))


def _preparation_code_digest() -> str:
    digest = hashlib.sha256()
    for name in _PREPARATION_CODE:
        digest.update((_REPO_ROOT / name).read_bytes())
    return digest.hexdigest()


def _cache_path(cache_dir: Path, source: CaseSource, contract: InputContract, seed: int, index: int,
                code_digest: str) -> Path:
    """Where a prepared case is kept: named by everything it depends on, files by size and mtime."""
    stamp: list[object] = [repr(source), contract.model_dump_json(), seed, index, code_digest]
    for path in (source.image, source.label):
        if path is not None:
            stat = Path(path).stat()
            stamp += [stat.st_size, stat.st_mtime_ns]
    key = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
    return cache_dir / f"{source.name}.{key}.npz"


def _prepare_indexed(args: tuple[CaseSource, InputContract, int, int, Path | None]) -> PreparedCase:
    source, contract, seed, index, cached = args
    if cached is not None and cached.is_file():
        with np.load(cached) as arrays:
            organs = arrays["organs"] if "organs" in arrays else None
            return PreparedCase(source.name, arrays["image"], arrays["label"], arrays["foreground"], organs)
    case = prepare_case(source, contract, np.random.default_rng([seed, index]))
    if cached is not None:  # atomically: a run killed mid-write leaves no half file behind
        write_atomically(cached, lambda tmp: _save_case(case, tmp))
    return case


def _save_case(case: PreparedCase, path: str) -> None:
    with open(path, "wb") as stream:  # a file, not a name: np.savez would add ".npz" to the name
        extra = {} if case.organs is None else {"organs": case.organs}
        np.savez(stream, image=case.image, label=case.label, foreground=case.foreground, **extra)


def prepare_cases(
    sources: Sequence[CaseSource], contract: InputContract, seed: int, workers: int = 1,
    cache_dir: Path | None = None,
) -> list[PreparedCase]:
    """`prepare_case` for each source, in order, on `workers` processes (1: in this process).

    Each case draws from its own generator (seed, index), so the result does not depend on the
    number of workers. Workers are spawned, not forked: the parent may hold CUDA and ITK threads.
    With `cache_dir`, each prepared case is kept there (as nnU-Net keeps its preprocessed data)
    and read back by the next run that asks for the same case under the same contract and code.
    """
    cached: list[Path | None] = [None] * len(sources)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        digest = _preparation_code_digest()
        cached = [_cache_path(cache_dir, s, contract, seed, i, digest) for i, s in enumerate(sources)]
    jobs = [(source, contract, seed, index, cached[index]) for index, source in enumerate(sources)]
    to_prepare = sum(path is None or not path.is_file() for path in cached)
    if workers <= 1 or to_prepare <= 1:
        return [_prepare_indexed(job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, to_prepare), mp_context=context) as pool:
        return list(pool.map(_prepare_indexed, jobs))


class PatchSampler:
    """Batches of random patches (nnU-Net style foreground oversampling) from prepared cases."""

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        patch_size_dhw: Sequence[int],
        batch_size: int,
        contract: InputContract,
        *,
        oversample_foreground: float = 0.33,
        n_classes: int = 2,
    ):
        if not cases:
            raise ValueError("PatchSampler needs at least one case")
        if n_classes > 2 and any(c.organs is None for c in cases):
            missing = next(c.name for c in cases if c.organs is None)
            raise ValueError(f"a {n_classes}-class network needs an organ map for every case; {missing} has none")
        self.n_classes = n_classes
        self.cases = list(cases)
        self.patch = tuple(int(p) for p in patch_size_dhw)
        self.batch_size = batch_size
        self.oversample_foreground = oversample_foreground
        self.pad_value = hu_to_input_units(AIR_HU, contract)  # what prepare puts outside the CT

    def _forced_foreground(self, index: int) -> bool:
        # nnU-Net's get_do_oversample: the last third of the batch is forced to foreground
        return not index < round(self.batch_size * (1 - self.oversample_foreground))

    def _start(self, case: PreparedCase, foreground: bool, generator: torch.Generator) -> list[int]:
        shape = case.image.shape
        if foreground and len(case.foreground):
            pick = int(torch.randint(len(case.foreground), (1,), generator=generator))
            centre = case.foreground[pick]
            starts = []
            for axis in range(3):
                lo_bound, hi_bound = min(0, shape[axis] - self.patch[axis]), max(0, shape[axis] - self.patch[axis])
                start = int(centre[axis]) - self.patch[axis] // 2
                starts.append(min(max(start, lo_bound), hi_bound))
            return starts
        starts = []
        for axis in range(3):
            room = shape[axis] - self.patch[axis]
            if room >= 0:
                starts.append(int(torch.randint(room + 1, (1,), generator=generator)))
            else:  # smaller than the patch: place the volume at a random offset inside it
                starts.append(-int(torch.randint(-room + 1, (1,), generator=generator)))
        return starts

    def _crop(self, array: np.ndarray, starts: list[int], fill: float) -> np.ndarray:
        out = np.full(self.patch, fill, dtype=array.dtype)
        src, dst = [], []
        for axis, start in enumerate(starts):
            lo, hi = max(start, 0), min(start + self.patch[axis], array.shape[axis])
            src.append(slice(lo, hi))
            dst.append(slice(lo - start, hi - start))
        out[tuple(dst)] = array[tuple(src)]
        return out

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: image (B, 1, D, H, W) float32 and, on the CPU, label (B, 1, D, H, W): int64
        class indices, or float32 liver fractions when the cases carry fractions (antialiasing
        contract); for a multi-class network, (B, C, D, H, W) float32 per-class targets
        (`train.classes.soft_targets`)."""
        images, labels, organs = [], [], []
        for index in range(self.batch_size):
            case = self.cases[int(torch.randint(len(self.cases), (1,), generator=generator))]
            starts = self._start(case, self._forced_foreground(index), generator)
            images.append(self._crop(case.image, starts, self.pad_value))
            labels.append(self._crop(case.label, starts, 0))
            if self.n_classes > 2:
                organs.append(self._crop(case.organs, starts, 0))
        image = torch.from_numpy(np.stack(images))[:, None]
        stacked = np.stack(labels)
        if self.n_classes > 2:
            liver = torch.from_numpy(stacked.astype(np.float32))
            return image, soft_targets(liver, torch.from_numpy(np.stack(organs)), self.n_classes)
        label = torch.from_numpy(stacked if stacked.dtype.kind == "f" else stacked.astype(np.int64))[:, None]
        return image, label

"""Tests for train/phantoms/parameters.py: anatomy 2's draws and their probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from train.phantoms import MAX_LESIONS
from train.phantoms.parameters import (
    ASCITES_P,
    BILIARY_DILATATION_P,
    CIRRHOSIS_P,
    HEPATOMEGALY_P,
    LIPIODOL_P,
    draw_disease,
    draw_scan,
    draw_tumours,
    resolve_disease,
    tumour_lesions,
)

N = 4000


def _rngs(n: int = N):
    return (np.random.default_rng(s) for s in np.random.SeedSequence(1234).spawn(n))


def test_anatomy_2_scans_reach_the_chest_more_often() -> None:
    one = [draw_scan(r, 1) for r in _rngs()]
    two = [draw_scan(r, 2) for r in _rngs()]
    share = {
        a: np.mean([s["kind"] == "chest_abdomen" for s in scans])
        for a, scans in ((1, one), (2, two))
    }
    assert share[1] == pytest.approx(0.1, abs=0.02)
    assert share[2] == pytest.approx(0.35, abs=0.03)
    tops = np.array([s["z_range_mm"][1] for s in two if s["kind"] == "abdomen"])
    assert tops.min() >= 20.0 and tops.max() <= 120.0 and (tops > 80.0).mean() > 0.3
    # The same draws otherwise: everything but the coverage is what anatomy 1 drew.
    for a, b in zip(one[:50], two[:50], strict=True):
        assert {k: v for k, v in a.items() if k not in ("kind", "z_range_mm")} == {
            k: v for k, v in b.items() if k not in ("kind", "z_range_mm")
        }


def test_disease_probabilities_are_the_documented_ones() -> None:
    d = [resolve_disease(draw_disease(r), {}) for r in _rngs()]
    cirrhotic = [x for x in d if x["cirrhosis"]]
    hcc = [x for x in d if x["tumours"] == "hcc"]
    assert np.mean([x["cirrhosis"] for x in d]) == pytest.approx(CIRRHOSIS_P, abs=0.02)
    assert np.mean([x["hepatomegaly"] for x in d]) == pytest.approx(HEPATOMEGALY_P, abs=0.015)
    assert np.mean([x["ascites"] for x in cirrhotic]) == pytest.approx(ASCITES_P[True], abs=0.06)
    assert np.mean([x["ascites"] for x in d if not x["cirrhosis"]]) == pytest.approx(
        ASCITES_P[False], abs=0.015
    )
    assert np.mean([x["tumours"] == "hcc" for x in cirrhotic]) == pytest.approx(0.5, abs=0.06)
    assert np.mean([x["lipiodol"] for x in hcc]) == pytest.approx(LIPIODOL_P, abs=0.06)
    assert not any(x["lipiodol"] for x in d if x["tumours"] != "hcc")
    assert np.mean([x["biliary_dilatation"] for x in d]) == pytest.approx(
        BILIARY_DILATATION_P, abs=0.015
    )
    assert not any(x["cirrhosis"] and x["hepatomegaly"] for x in d)


def test_a_given_flag_moves_no_magnitude_and_no_unrelated_flag() -> None:
    for r in _rngs(20):
        drawn = draw_disease(r)
        free, given = resolve_disease(drawn, {}), resolve_disease(drawn, {"tumours": "hcc"})
        assert {k: v for k, v in free.items() if k not in ("tumours", "lipiodol")} == {
            k: v for k, v in given.items() if k not in ("tumours", "lipiodol")
        }


def test_a_given_magnitude_replaces_its_draw_and_an_unknown_key_is_refused() -> None:
    drawn = draw_disease(next(_rngs(1)))
    given = resolve_disease(drawn, {"ascites": True, "ascites_mm": 32})
    free = resolve_disease(drawn, {"ascites": True})
    assert given["ascites"] and given["ascites_mm"] == 32.0 and free["ascites_mm"] == drawn["ascites_mm"]
    assert {k: v for k, v in given.items() if k != "ascites_mm"} == {k: v for k, v in free.items() if k != "ascites_mm"}
    with pytest.raises(ValueError, match=r"unknown disease keys \['ascites_cm'\]"):
        resolve_disease(drawn, {"ascites_cm": 3})


@pytest.mark.parametrize(
    ("burden", "kinds", "counts"),
    [
        ("benign", {"hypo", "cyst", "hyper"}, (1, 6)),
        ("hcc", {"hcc"}, (1, 4)),
        ("metastases", {"metastasis"}, (6, MAX_LESIONS)),
        ("none", {"hypo", "cyst", "hyper"}, (0, 0)),
    ],
)
def test_tumour_burdens(burden: str, kinds: set, counts: tuple) -> None:
    for r in _rngs(40):
        flags = resolve_disease(draw_disease(r), {"tumours": burden})
        n, lesions = tumour_lesions(draw_tumours(r), flags)
        assert counts[0] <= n <= counts[1] and len(lesions) == MAX_LESIONS
        assert {les["kind"] for les in lesions} <= kinds
        if burden == "hcc":
            assert 20.0 <= lesions[0]["radius_mm"] <= 70.0  # the large one
        if burden == "metastases":
            assert all(4.0 <= les["radius_mm"] <= 25.0 for les in lesions)

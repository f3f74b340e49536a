"""The viewer page at / in a real headless Chromium: the DICOM sample uploaded as a folder with the
API key typed in, the job followed to the end, the mask drawn by Niivue where the service's mask
is (checked pixel by pixel from screenshots), the confidence shown on request, the summary and
review flag shown, every download returning its file, and no request to another host; the API's
own pages (/docs, /redoc) too.

docs/viewer.png is the page as the fixture leaves it: run with `--basetemp=/tmp/browser` and take
/tmp/browser/screens0/viewer-page.png, quantised to 128 colours (PIL, MEDIANCUT, no dither)."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy import ndimage

from tests.browser.conftest import API_KEY
from tests.conftest import read_nifti

AROUND_LIVER_MM = 10  # as in viewer.js

pytestmark = [pytest.mark.slow, pytest.mark.realdata]

# How each download must start: gzip (NIfTI), DICOM's preamble + DICM, PNG, JSON.
MAGIC = {
    "mask": b"\x1f\x8b",
    "ct": b"\x1f\x8b",
    "confidence": b"\x1f\x8b",
    "probability": b"\x1f\x8b",
    "preview": b"\x89PNG",
}
DICOM_LINKS = {"seg", "rtstruct"}


def steady_screenshot(page, locator=None, tries: int = 20) -> bytes:
    """A PNG of `locator` (else the page) once Niivue has drawn what was just asked: after two
    animation frames, shots are taken until two in a row are the same (software WebGL on a busy
    machine may need several frames)."""
    page.evaluate(
        "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
    )
    target = locator or page
    last = target.screenshot()
    for _ in range(tries):
        page.wait_for_timeout(200)
        shot = target.screenshot()
        if shot == last:
            return shot
        last = shot
    raise AssertionError(f"the drawing still changed after {tries} screenshots")


def screenshot(page, locator) -> np.ndarray:
    """The steady `locator` as (rows, cols, RGB) ints."""
    return np.asarray(
        Image.open(io.BytesIO(steady_screenshot(page, locator))).convert("RGB")
    ).astype(int)


def set_range(page, selector: str, value: float) -> None:
    page.eval_on_selector(
        selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value
    )


def canvas_positions(page, points_lps_mm: np.ndarray) -> np.ndarray:
    """Where Niivue draws each LPS point (mm) on its canvas, as (x, y) canvas pixels (NaN: not shown)."""
    positions = page.evaluate(
        """(points) => points.map(([x, y, z]) => {
            const nv = window.liverseg.nv;
            const pos = nv.frac2canvasPos(nv.mm2frac([-x, -y, z]));  // Niivue works in RAS
            return pos ? [pos[0], pos[1]] : [NaN, NaN];
        })""",
        points_lps_mm.tolist(),
    )
    return np.array(positions, dtype=float)


@dataclass
class Recorded:
    """A browser context whose every request (the pages' and their workers') is recorded; those to
    another host are recorded apart and refused, as a network with no internet would."""

    context: object
    seen: list[str]
    foreign: list[str]


def recording_context(browser, server_url: str) -> Recorded:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    # Software WebGL on a busy 2-core machine: a first frame of a new layer can take 30 s.
    context.set_default_timeout(300_000)
    host = urlsplit(server_url).netloc
    recorded = Recorded(context, [], [])

    def record(route):
        url = route.request.url
        recorded.seen.append(url)
        if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).netloc != host:
            recorded.foreign.append(url)
            return route.abort()
        return route.continue_()

    context.route("**/*", record)
    return recorded


@dataclass
class Viewed:
    """The page once the sample's job is shown, the job as the API gives it, the requests, and the
    page's uncaught errors and console errors."""

    page: object
    job: dict
    seen: list[str]
    foreign: list[str]
    errors: list[str]


@pytest.fixture(scope="module")
def viewed(browser, viewer_server, real_sample, tmp_path_factory):
    recorded = recording_context(browser, viewer_server.url)
    page = recorded.context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    page.on(
        "console",
        lambda message: message.type == "error" and errors.append(f"console: {message.text}"),
    )
    page.goto(f"{viewer_server.url}/")
    page.wait_for_selector("body[data-state=idle]")
    page.fill("#api-key", API_KEY)
    page.check("#want-confidence")
    page.set_input_files("#folder-input", str(real_sample / "dicom"))  # a folder of DICOM files
    page.wait_for_selector("body[data-state=ready], body[data-state=error]", timeout=600_000)
    assert page.get_attribute("body", "data-state") == "ready", page.inner_text("#error")
    job_id = re.search(r"job ([0-9a-f]{32})", page.inner_text("#state")).group(1)
    with httpx.Client(
        base_url=viewer_server.url, headers={"X-API-Key": API_KEY}, timeout=120
    ) as client:
        job = client.get(f"/jobs/{job_id}").json()
    (tmp_path_factory.mktemp("screens") / "viewer-page.png").write_bytes(steady_screenshot(page))
    yield Viewed(page, job, recorded.seen, recorded.foreign, errors)
    recorded.context.close()


def test_the_page_follows_the_job_and_shows_its_summary(viewed, viewer_server) -> None:
    page, job = viewed.page, viewed.job
    assert not viewed.errors
    assert job["state"] == "done"
    assert f"{viewer_server.url}/jobs/{job['id']}" in viewed.seen, "the page polled the job"
    summary = job["summary"]
    figures = page.inner_text("#figures")
    assert (
        f"Liver {summary['liver_volume_ml']:.1f} mL, mean {summary['liver_mean_hu']:.0f} HU"
        in figures
    )
    review = page.inner_text("#review")
    if summary["review_recommended"]:
        assert "Review recommended" in review
        for reason in summary["review_reasons"]:
            assert reason["sentence"] in review
    else:
        assert "No review recommended" in review


def test_the_viewer_draws_the_mask_where_the_mask_is(viewed, viewer_server) -> None:
    """Axial view: the pixels the mask layer colours (opacity 0.5 against 0) are amber, and they lie
    where the service's mask is on the slice shown: Niivue says where each voxel centre is drawn,
    the mask file says which voxels are liver."""
    page, job = viewed.page, viewed.job
    with httpx.Client(
        base_url=viewer_server.url, headers={"X-API-Key": API_KEY}, timeout=120
    ) as client:
        mask = read_nifti(client.get(job["links"]["mask"]).content)
    page.click("button[data-view=axial]")
    set_range(page, "#opacity", 0.5)
    canvas = page.locator("#gl")
    shown = screenshot(page, canvas)
    set_range(page, "#opacity", 0)
    hidden = screenshot(page, canvas)
    set_range(page, "#opacity", 0.5)
    drawn = np.abs(shown - hidden).sum(axis=2) > 30
    assert drawn.mean() > 0.01, "the mask layer colours a visible part of the canvas"
    tint = shown[drawn] - hidden[drawn]
    assert tint[:, 0].mean() > 20 and tint[:, 2].mean() < -20, "amber: red up, blue down"

    # The slice Niivue shows, and where it draws each voxel centre of it.
    crosshair_ras = page.evaluate(
        "() => Array.from(window.liverseg.nv.frac2mm(window.liverseg.nv.scene.crosshairPos))"
    )
    z = mask.TransformPhysicalPointToIndex(
        (-crosshair_ras[0], -crosshair_ras[1], crosshair_ras[2])
    )[2]
    liver = sitk.GetArrayViewFromImage(mask)[z].astype(bool)  # (y, x)
    inside = ndimage.binary_erosion(liver, iterations=3)
    outside = ~ndimage.binary_dilation(liver, iterations=3)
    rng = np.random.default_rng(0)
    samples = {}
    for name, region in (("inside", inside), ("outside", outside)):
        ys, xs = np.nonzero(region)
        pick = rng.choice(ys.size, size=min(300, ys.size), replace=False)
        samples[name] = [
            mask.TransformIndexToPhysicalPoint((int(xs[k]), int(ys[k]), z)) for k in pick
        ]
    width = page.evaluate("() => document.getElementById('gl').width")
    scale = shown.shape[1] / width
    for name, points in samples.items():
        xy = canvas_positions(page, np.array(points)) * scale
        on_canvas = ~np.isnan(xy).any(axis=1)
        assert on_canvas.mean() > 0.9, f"{name}: Niivue shows the slice's voxels"
        cols, rows = np.round(xy[on_canvas]).astype(int).T
        keep = (rows >= 0) & (rows < drawn.shape[0]) & (cols >= 0) & (cols < drawn.shape[1])
        coloured = drawn[rows[keep], cols[keep]].mean()
        if name == "inside":
            assert coloured > 0.95, (
                f"only {coloured:.0%} of the liver's voxel centres are drawn in the mask's colour"
            )
        else:
            assert coloured < 0.05, (
                f"{coloured:.0%} of voxel centres away from the liver are coloured"
            )
    # Radiological convention: the liver, in the patient's right, on the viewer's left.
    assert np.nonzero(drawn)[1].mean() < drawn.shape[1] / 2


def test_the_confidence_is_shown_when_asked_and_only_around_the_liver(viewed) -> None:
    """Ticked, low confidence turns part of the axial view red, all of it within the liver's box
    and AROUND_LIVER_MM of it (where Niivue draws that box's corners); unticked, it goes."""
    page, job = viewed.page, viewed.job
    assert "confidence" in job["links"]
    page.click("button[data-view=axial]")
    canvas = page.locator("#gl")
    before = screenshot(page, canvas)
    page.check("#show-confidence")
    page.wait_for_function("() => window.liverseg.confidence !== null")
    after = screenshot(page, canvas)
    page.uncheck("#show-confidence")
    again = screenshot(page, canvas)
    changed = np.abs(after - before).sum(axis=2) > 30
    assert changed.mean() > 0.001, "some of the liver is unsure enough to show"
    assert (after[changed, 1] - before[changed, 1]).mean() < -20, "red: green down"
    assert (after[changed, 0] - after[changed, 1]).mean() > 60, "red"
    assert (np.abs(again - before).sum(axis=2) > 30).mean() < 0.0005, "hidden again when unticked"

    box = job["summary"]["bbox"]
    crosshair_ras = page.evaluate(
        "() => Array.from(window.liverseg.nv.frac2mm(window.liverseg.nv.scene.crosshairPos))"
    )
    corners = np.array(
        [
            [
                box["min_lps_mm"][0] - AROUND_LIVER_MM,
                box["min_lps_mm"][1] - AROUND_LIVER_MM,
                crosshair_ras[2],
            ],
            [
                box["max_lps_mm"][0] + AROUND_LIVER_MM,
                box["max_lps_mm"][1] + AROUND_LIVER_MM,
                crosshair_ras[2],
            ],
        ]
    )
    width = page.evaluate("() => document.getElementById('gl').width")
    (x0, y0), (x1, y1) = canvas_positions(page, corners) * (after.shape[1] / width)
    rows, cols = np.nonzero(changed)
    slack = 3  # pixels: voxel edges and blending
    within = (
        (cols >= min(x0, x1) - slack)
        & (cols <= max(x0, x1) + slack)
        & (rows >= min(y0, y1) - slack)
        & (rows <= max(y0, y1) + slack)
    )
    assert within.mean() > 0.99, f"{1 - within.mean():.1%} of the red lies away from the liver"


def test_every_download_returns_its_file(viewed, viewer_server) -> None:
    """The list is the job's links (self aside); each link, clicked in the page (which sends the
    API key), saves the same bytes the API gives for it, and those bytes are that kind of file."""
    page, job = viewed.page, viewed.job
    links = page.eval_on_selector_all(
        "#downloads a", "links => links.map(a => [a.dataset.link, a.getAttribute('href')])"
    )
    assert {name for name, _ in links} == set(job["links"]) - {"self"}
    assert "mask" in dict(links) and "summary" in dict(links) and "preview" in dict(links)
    with httpx.Client(
        base_url=viewer_server.url, headers={"X-API-Key": API_KEY}, timeout=120
    ) as client:
        for name, href in links:
            assert href == job["links"][name]
            expected = client.get(href)
            assert expected.status_code == 200, (name, expected.text)
            with page.expect_download() as download_info:
                page.click(f"#downloads a[data-link={name}]")
            saved = download_info.value
            data = Path(saved.path()).read_bytes()
            assert data == expected.content, name
            if name in MAGIC:
                assert data.startswith(MAGIC[name]), name
            elif name in DICOM_LINKS:
                assert data[128:132] == b"DICM", name
            elif name == "summary":
                assert json.loads(data) == job["summary"]


def test_the_page_asked_nothing_of_another_host(viewed, viewer_server) -> None:
    """All the page did (load, poll, Niivue's loads, the confidence, the downloads) stayed here."""
    assert f"{viewer_server.url}/viewer/niivue.min.js" in viewed.seen, "requests are recorded"
    assert f"{viewer_server.url}/jobs/{viewed.job['id']}/ct" in viewed.seen, (
        "Niivue's loads are recorded"
    )
    assert viewed.foreign == []


# FastAPI alone loads Swagger UI and ReDoc from a CDN; here each page is served from the package.
API_PAGES = {
    "/docs": ".swagger-ui .info .title:has-text('liverseg')",
    "/redoc": "redoc h1:has-text('liverseg')",
}


@pytest.fixture(scope="module")
def api_pages(browser, viewer_server) -> dict[str, tuple[str, Recorded]]:
    """Each API page once its title shows and the network is quiet: (the page's text, its requests)."""
    shown = {}
    for path, title in API_PAGES.items():
        recorded = recording_context(browser, viewer_server.url)
        page = recorded.context.new_page()
        page.goto(f"{viewer_server.url}{path}")
        page.wait_for_selector(title)
        page.wait_for_load_state("networkidle")  # what the page asks for after it first draws
        shown[path] = (page.inner_text("body"), recorded)
        recorded.context.close()
    return shown


@pytest.mark.parametrize("path", API_PAGES)
def test_the_api_page_shows_the_api_from_here(api_pages, viewer_server, path) -> None:
    text, recorded = api_pages[path]
    assert "Something went wrong" not in text  # ReDoc's words for a spec it cannot read
    assert "/jobs/{job_id}" in text
    assert f"{viewer_server.url}/openapi.json" in recorded.seen


@pytest.mark.parametrize(
    "path",
    [
        "/docs",
        "/redoc",
    ],
)
def test_the_api_page_asks_nothing_of_another_host(api_pages, path) -> None:
    _, recorded = api_pages[path]
    assert recorded.foreign == []

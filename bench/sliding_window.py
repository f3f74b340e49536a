"""Benchmark: liverseg's sliding-window engine against MONAI's `sliding_window_inference`.

Both run the same network (model_zoo "unet3d_ds", seeded random weights), on the same volume,
with the same settings (patch, overlap 0.5, Gaussian blending, sigma 0.125, window batch), in
the same way: each timed run is a fresh subprocess (so its peak RSS is its own; ru_maxrss only
grows), runs alternate ours/MONAI in an ABBA order to cancel drift on a shared machine, and each
warms the network up on one batch before the clock starts. Reported: median wall time, the
speedup, the Dice between the two argmax masks, the largest logit difference with our skipping
off, peak RSS, and the engines' own overhead measured with a trivial predictor.

The volume is a synthetic abdominal CT (512x512x300 at 0.8x0.8x1.5 mm: an elliptic body with a
fat layer, liver, spleen, kidneys, bowel, spine and lung bases, noise, air around it and a table
under it), brought to 3 mm and clipped to the HU window [-200, 300] -> [0, 1] by the model zoo's
own preprocessing (`model_zoo.preprocessing.prepare`), as the service does.

    .venv/bin/python bench/sliding_window.py [--device cpu|cuda] [--repeats 3] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script (`python bench/sliding_window.py`): find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from model_zoo import create_network  # noqa: E402
from model_zoo.card import InputContract, ModelCard  # noqa: E402
from model_zoo.preprocessing import hu_to_input_units, prepare  # noqa: E402
from service.options import resolve_options  # noqa: E402
from service.sliding_window import sliding_window_inference, window_starts  # noqa: E402

HU_WINDOW = (-200.0, 300.0)
AIR_THRESHOLD_HU = -500.0  # windows at or below this (after the window clip: its floor) are air
FEATURES = [8, 16, 32, 64]  # a slim unet3d_ds, as a CPU-served model would be
SEED = 0
# The benchmarked network's card; its inference options are resolved as the service resolves
# a card's (service.options), so both engines run what a request with no options would.
CARD = ModelCard(
    name="unet3d_ds.bench", arch="unet3d_ds", arch_kwargs={"features": FEATURES},
    input=InputContract(spacing_xyz_mm=(3.0, 3.0, 3.0), hu_window=HU_WINDOW, patch_size_dhw=(64, 64, 64)),
    intended_use="benchmark only",
)
_OPTIONS = resolve_options(CARD)
OVERLAP, MODE, SIGMA = _OPTIONS.overlap, _OPTIONS.mode, _OPTIONS.sigma_scale


def synthesise_ct(shape_zyx: tuple[int, int, int], spacing_xyz_mm: tuple[float, float, float],
                  seed: int = 0) -> sitk.Image:
    """A synthetic abdominal CT in HU (int16), (D, H, W) = shape_zyx, body and organs scaled to the FOV."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape_zyx
    sx, sy, sz = spacing_xyz_mm
    fov_x, fov_y, fov_z = nx * sx, ny * sy, nz * sz
    z_mm = (np.arange(nz) + 0.5) * sz
    x_mm, y_mm = np.meshgrid((np.arange(nx) + 0.5) * sx, (np.arange(ny) + 0.5) * sy)  # (ny, nx)
    cx, cy, ax, ay = fov_x / 2, fov_y * 0.46, 0.41 * fov_x, 0.29 * fov_y

    def radius2(x0: float, y0: float, a: float, b: float) -> np.ndarray:
        return ((x_mm - x0) / a) ** 2 + ((y_mm - y0) / b) ** 2

    body, inner = radius2(cx, cy, ax, ay) <= 1, radius2(cx, cy, ax - 15, ay - 15) <= 1
    table_top = cy + ay + 8
    table = (y_mm >= table_top) & (y_mm <= table_top + 25) & (np.abs(x_mm - cx) <= 0.45 * fov_x)
    table_core = table & (y_mm >= table_top + 4) & (y_mm <= table_top + 21)
    spine = radius2(cx, cy + 0.7 * ay, 18, 18) <= 1
    # ellipsoids: centre x, y, z (mm), semi-axes (mm), HU; patient right is low x in LPS
    ellipsoids = [
        (cx - 0.5 * ax, cy - 0.1 * ay, 0.95 * fov_z, 0.4 * ax, 0.6 * ay, 0.2 * fov_z, -850),  # lungs
        (cx + 0.5 * ax, cy - 0.1 * ay, 0.95 * fov_z, 0.4 * ax, 0.6 * ay, 0.2 * fov_z, -850),
        (cx - 0.45 * ax, cy - 0.1 * ay, 0.55 * fov_z, 0.45 * ax, 0.6 * ay, 0.22 * fov_z, 100),  # liver
        (cx + 0.55 * ax, cy + 0.1 * ay, 0.6 * fov_z, 0.2 * ax, 0.35 * ay, 0.1 * fov_z, 110),  # spleen
        (cx - 0.35 * ax, cy + 0.45 * ay, 0.4 * fov_z, 0.12 * ax, 0.2 * ay, 0.08 * fov_z, 150),  # kidneys
        (cx + 0.35 * ax, cy + 0.45 * ay, 0.4 * fov_z, 0.12 * ax, 0.2 * ay, 0.08 * fov_z, 150),
        (cx, cy + 0.1 * ay, 0.45 * fov_z, 0.1 * ax, 0.12 * ay, 0.6 * fov_z, 10),  # bowel, darker
    ]
    maps = [(radius2(x0, y0, a, b), z0, c, hu) for x0, y0, z0, a, b, c, hu in ellipsoids]
    volume = np.empty(shape_zyx, np.float32)
    for k in range(nz):
        plane = volume[k]
        plane.fill(-1000)
        plane[table], plane[table_core] = -300, 200
        plane[body], plane[inner] = -100, 40  # subcutaneous fat, then soft tissue
        for r2, z0, c, hu in maps:
            limit = 1 - ((z_mm[k] - z0) / c) ** 2
            if limit > 0:
                plane[(r2 <= limit) & inner] = hu
        plane[spine] = 500
    volume += rng.standard_normal(shape_zyx, dtype=np.float32) * 15
    image = sitk.GetImageFromArray(volume.astype(np.int16))
    image.SetSpacing(spacing_xyz_mm)
    return image


def make_volume(quick: bool, patch: tuple[int, int, int]) -> tuple[np.ndarray, InputContract, dict]:
    """The benchmark volume on the 3 mm model grid, (D, H, W) float32 in [0, 1], and its contract."""
    shape = (120, 256, 256) if quick else (300, 512, 512)
    started = time.perf_counter()
    ct = synthesise_ct(shape, (0.8, 0.8, 1.5), SEED)
    contract = InputContract(spacing_xyz_mm=(3.0, 3.0, 3.0), hu_window=HU_WINDOW, patch_size_dhw=patch)
    array = prepare(ct, contract).array
    cropped = prepare(ct, contract.model_copy(update={"crop_to_body": True})).array.shape
    info = {"source_shape_dhw": list(shape), "source_spacing_xyz_mm": [0.8, 0.8, 1.5],
            "shape_dhw": list(array.shape), "spacing_xyz_mm": [3.0, 3.0, 3.0],
            "hu_window": list(HU_WINDOW), "crop_to_body_shape_dhw": list(cropped),
            "crop_to_body_windows": len(window_starts(
                tuple(max(s, p) for s, p in zip(cropped, patch, strict=True)), patch, (OVERLAP,) * 3)),
            "synthesis_s": round(time.perf_counter() - started, 1)}
    return array, contract, info


def build_network(device: str) -> torch.nn.Module:
    torch.manual_seed(SEED)
    return create_network("unet3d_ds", features=FEATURES).to(device).eval()


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _monai_autocast(device: str):
    """MONAI does not autocast itself; on CUDA give it the same autocast our engine uses."""
    import contextlib

    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


class RssSampler:
    """Largest resident set size (MB) of this process while in the `with` block, sampled every 5 ms."""

    def __init__(self) -> None:
        import threading

        self.peak_mb, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20

    def _current_mb(self) -> float:
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * self._page_mb
        except (OSError, IndexError, ValueError):  # not Linux: only ru_maxrss is reported
            return 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_mb = max(self.peak_mb, self._current_mb())

    def __enter__(self) -> RssSampler:
        self.start_mb = self.peak_mb = self._current_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._current_mb())


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_worker(args: argparse.Namespace) -> None:
    """One timed inference by one engine in this (fresh) process; writes its output and stats."""
    from monai.inferers import sliding_window_inference as monai_swi

    work = Path(args.workdir)
    volume = np.load(work / "volume.npy")
    params = json.loads((work / "params.json").read_text())
    patch, batch, device = tuple(params["patch"]), params["batch_size"], args.device
    image = torch.from_numpy(volume)[None, None].to(device)
    net = build_network(device)
    with torch.inference_mode():  # warm-up on one batch: kernels and allocator, same for both
        net(torch.zeros(batch, 1, *patch, device=device))
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    total, skipped = len(window_starts(tuple(max(s, p) for s, p in zip(volume.shape, patch, strict=True)),
                                       patch, (OVERLAP,) * 3)), 0
    with RssSampler() as rss:
        started, cpu_started = time.perf_counter(), _cpu_seconds()
        if args.worker == "monai":
            with torch.inference_mode(), _monai_autocast(device):
                out = monai_swi(image, patch, batch, net, overlap=OVERLAP, mode=MODE, sigma_scale=SIGMA)
        else:
            result = sliding_window_inference(
                image, patch, net, overlap=OVERLAP, batch_size=batch, mode=MODE, sigma_scale=SIGMA,
                skip_below=params["skip_below"] if args.worker == "ours" else None)
            out, total, skipped = result.main, result.windows_total, result.windows_skipped
        _sync(device)
        elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu_started
    stats = {"engine": args.worker, "seconds": elapsed, "cpu_seconds": cpu, "windows_total": total,
             "windows_skipped": skipped,
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "run_rss_mb": {"before": rss.start_mb, "peak": rss.peak_mb}}
    if device.startswith("cuda"):
        stats["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    np.save(work / f"{args.worker}.npy", out.float().cpu().numpy()[0])
    (work / f"{args.worker}.{args.run}.json").write_text(json.dumps(stats))


def _spawn(engine: str, run: int, work: Path, device: str, hugetlb: bool) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--run", str(run),
               "--workdir", str(work), "--device", device]
    env = dict(os.environ)
    if hugetlb:  # glibc >= 2.35: malloc asks for transparent huge pages (both engines alike)
        env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
    subprocess.run(command, check=True, env=env)
    return json.loads((work / f"{engine}.{run}.json").read_text())


def engine_overhead(volume: np.ndarray, patch: tuple[int, int, int], batch: int, device: str,
                    repeats: int) -> dict[str, float]:
    """Seconds per call of each engine with a near-free predictor: the engines' own work only."""
    from monai.inferers import sliding_window_inference as monai_swi

    image = torch.from_numpy(volume)[None, None].to(device)

    def two_channels(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, 1 - x], dim=1)

    def ours() -> None:
        sliding_window_inference(image, patch, two_channels, overlap=OVERLAP, batch_size=batch,
                                 mode=MODE, sigma_scale=SIGMA)

    def theirs() -> None:
        with torch.inference_mode():
            monai_swi(image, patch, batch, two_channels, overlap=OVERLAP, mode=MODE, sigma_scale=SIGMA)

    times: dict[str, list[float]] = {"ours": [], "monai": []}
    cpu: dict[str, list[float]] = {"ours": [], "monai": []}
    runners: dict[str, Callable[[], None]] = {"ours": ours, "monai": theirs}
    ours(), theirs()  # warm-up
    for i in range(repeats):
        for name in (("ours", "monai") if i % 2 == 0 else ("monai", "ours")):
            _sync(device)
            started, cpu_started = time.perf_counter(), _cpu_seconds()
            runners[name]()
            _sync(device)
            times[name].append(time.perf_counter() - started)
            cpu[name].append(_cpu_seconds() - cpu_started)
    return {name: statistics.median(values) for name, values in times.items()} | {
        f"{name}_cpu": statistics.median(values) for name, values in cpu.items()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine (median)")
    parser.add_argument("--quick", action="store_true", help="a smaller volume (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    parser.add_argument("--patch", type=int, default=64, help="cubic patch size (voxels)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward, both engines")
    parser.add_argument("--malloc-hugetlb", action="store_true",
                        help="run both engines with GLIBC_TUNABLES=glibc.malloc.hugetlb=1")
    parser.add_argument("--worker", choices=["ours", "ours-noskip", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args)
        return

    import monai

    patch = (args.patch,) * 3
    load_before = os.getloadavg()[0]
    volume, contract, info = make_volume(args.quick, patch)
    skip_below = hu_to_input_units(AIR_THRESHOLD_HU, contract)
    with tempfile.TemporaryDirectory(prefix="bench-sw-") as tmp:
        work = Path(tmp)
        np.save(work / "volume.npy", volume)
        (work / "params.json").write_text(json.dumps({"patch": patch, "batch_size": args.batch_size,
                                                       "skip_below": skip_below}))
        runs: dict[str, list[dict]] = {"ours": [], "monai": []}
        for i in range(args.repeats):  # ABBA: ours, monai, monai, ours, ...
            for engine in (("ours", "monai") if i % 2 == 0 else ("monai", "ours")):
                runs[engine].append(_spawn(engine, i, work, args.device, args.malloc_hugetlb))
        ours_out, monai_out = np.load(work / "ours.npy"), np.load(work / "monai.npy")
        if runs["ours"][-1]["windows_skipped"]:
            _spawn("ours-noskip", 0, work, args.device, args.malloc_hugetlb)
            noskip_out = np.load(work / "ours-noskip.npy")
        else:  # nothing was skipped: the timed run is the no-skip run
            noskip_out = ours_out
    overhead = engine_overhead(volume, patch, args.batch_size, args.device, max(3 * args.repeats, 9))

    ours_mask, monai_mask = ours_out.argmax(0) == 1, monai_out.argmax(0) == 1
    median = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    cpu_median = {name: statistics.median(r["cpu_seconds"] for r in rs) for name, rs in runs.items()}
    report = {
        "speedup_vs_monai": median["monai"] / median["ours"],
        "dice_vs_monai": dice(ours_mask, monai_mask),
        "max_abs_diff_no_skip": float(np.abs(noskip_out - monai_out).max()),
        "max_abs_diff_with_skip": float(np.abs(ours_out - monai_out).max()),
        "seconds_median": median,
        "seconds_runs": {name: [round(r["seconds"], 2) for r in rs] for name, rs in runs.items()},
        "cpu_seconds_median": cpu_median,
        "speedup_vs_monai_cpu_time": cpu_median["monai"] / cpu_median["ours"],
        "peak_rss_mb": {name: max(r["peak_rss_mb"] for r in rs) for name, rs in runs.items()},
        "run_rss_growth_mb": {name: max(r["run_rss_mb"]["peak"] - r["run_rss_mb"]["before"] for r in rs)
                              for name, rs in runs.items()},
        "windows_total": runs["ours"][-1]["windows_total"],
        "windows_skipped": runs["ours"][-1]["windows_skipped"],
        "skip_below": skip_below,
        "foreground_fraction": float(monai_mask.mean()),
        "engine_overhead_s": overhead,
        "engine_overhead_speedup": overhead["monai"] / overhead["ours"],
        "device": describe_device(args.device),
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "torch": torch.__version__,
        "monai": monai.__version__,
        "network": {"arch": "unet3d_ds", "features": FEATURES, "weights": f"random, seed {SEED}"},
        "settings": {"patch_size_dhw": list(patch), "overlap": OVERLAP, "mode": MODE,
                     "sigma_scale": SIGMA, "batch_size": args.batch_size, "repeats": args.repeats,
                     "malloc_hugetlb": args.malloc_hugetlb},
        "volume": info,
    }
    if args.device.startswith("cuda"):
        report["peak_cuda_mb"] = {name: max(r["peak_cuda_mb"] for r in rs) for name, rs in runs.items()}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_table(report)


def print_table(r: dict) -> None:
    s, v = r["settings"], r["volume"]
    load = r["load_average_1min"]
    print(f"sliding window: liverseg vs MONAI {r['monai']} (torch {r['torch']}) on {r['device']} "
          f"(load average {load['start']:.1f} at start, {load['end']:.1f} at end)")
    print(f"volume {v['shape_dhw']} (D,H,W) at 3 mm from {v['source_shape_dhw']} at 0.8x0.8x1.5 mm, "
          f"HU {v['hu_window']} -> [0, 1]")
    print(f"unet3d_ds {r['network']['features']} ({r['network']['weights']}), patch {s['patch_size_dhw']}, "
          f"overlap {s['overlap']}, {s['mode']} sigma {s['sigma_scale']}, batch {s['batch_size']}, "
          f"{s['repeats']} runs each{', malloc hugetlb' if s['malloc_hugetlb'] else ''}")
    print(f"windows {r['windows_total']}, skipped by ours {r['windows_skipped']} "
          f"(every voxel <= {r['skip_below']:g}, i.e. <= {AIR_THRESHOLD_HU:g} HU)\n")
    rows = [
        ("wall time, median (s)", f"{r['seconds_median']['ours']:.2f}", f"{r['seconds_median']['monai']:.2f}",
         f"{r['speedup_vs_monai']:.2f}x"),
        ("wall time, runs (s)", " ".join(f"{t:.1f}" for t in r["seconds_runs"]["ours"]),
         " ".join(f"{t:.1f}" for t in r["seconds_runs"]["monai"]), ""),
        ("CPU time, median (s)", f"{r['cpu_seconds_median']['ours']:.2f}",
         f"{r['cpu_seconds_median']['monai']:.2f}", f"{r['speedup_vs_monai_cpu_time']:.2f}x"),
        ("peak RSS of the process (MB)", f"{r['peak_rss_mb']['ours']:.0f}",
         f"{r['peak_rss_mb']['monai']:.0f}", f"{r['peak_rss_mb']['ours'] / r['peak_rss_mb']['monai']:.2f}x"),
        ("RSS growth during the call (MB)", f"{r['run_rss_growth_mb']['ours']:.0f}",
         f"{r['run_rss_growth_mb']['monai']:.0f}", ""),
        ("engine alone, trivial predictor (ms)", f"{r['engine_overhead_s']['ours'] * 1e3:.0f}",
         f"{r['engine_overhead_s']['monai'] * 1e3:.0f}", f"{r['engine_overhead_speedup']:.2f}x"),
        ("engine alone, CPU time (ms)", f"{r['engine_overhead_s']['ours_cpu'] * 1e3:.0f}",
         f"{r['engine_overhead_s']['monai_cpu'] * 1e3:.0f}",
         f"{r['engine_overhead_s']['monai_cpu'] / r['engine_overhead_s']['ours_cpu']:.2f}x"),
    ]
    if "peak_cuda_mb" in r:
        rows.insert(3, ("peak CUDA memory (MB)", f"{r['peak_cuda_mb']['ours']:.0f}",
                        f"{r['peak_cuda_mb']['monai']:.0f}", ""))
    width = max(len(row[0]) for row in rows)
    print(f"{'':{width}}  {'ours':>14}  {'MONAI':>14}  {'ratio':>8}")
    for name, ours, theirs, ratio in rows:
        print(f"{name:{width}}  {ours:>14}  {theirs:>14}  {ratio:>8}")
    print(f"\nDice (argmax masks, ours vs MONAI): {r['dice_vs_monai']:.6f} "
          f"(foreground {r['foreground_fraction']:.1%} of voxels)")
    print(f"max |logit difference|: {r['max_abs_diff_no_skip']:.2e} with our skipping off, "
          f"{r['max_abs_diff_with_skip']:.2e} with it on")
    print(f"with the contract's crop_to_body the grid would be {v['crop_to_body_shape_dhw']} (D,H,W), "
          f"{v['crop_to_body_windows']} windows")


if __name__ == "__main__":
    main()

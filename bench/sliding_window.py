"""Benchmark: the inference we serve against MONAI's standard `sliding_window_inference`.

The case is what the service runs by default: the bundled checkpoint (its card's weights, patch,
overlap, Gaussian sigma and window batch) on a CT-sized phantom (train.phantoms seed 7,
512x512x300 at 0.8x0.8x1.5 mm, as bench/service.py uploads), brought onto the card's grid by the
model zoo's own preprocessing. Each timed run is a fresh subprocess (its peak RSS is its own),
warmed up before the clock starts (OpenVINO compiled, one batch run), in an ABBA order against
MONAI to cancel drift on a shared machine. One run prints:

- `speedup_vs_monai`, `dice_vs_monai`: our whole inference path (`service.pipeline.
  predict_probabilities`: ROI inference on the model's runtime, OpenVINO on the CPU) against
  MONAI's `sliding_window_inference` over every window with eager PyTorch and the same predictor
  (softmax of the main output, liver channel), same weights, overlap, sigma and batch. Dice is
  between the masks the pipeline would keep (> 0.5, largest component, holes filled);
- `engine`: our engine alone on that same eager predictor, every window, against MONAI;
- `roi`: ROI on against off on our runtime, and the Dice between their masks;
- the machine, its load, torch/MONAI/OpenVINO versions, peak RSS per engine.

    .venv/bin/python bench/sliding_window.py [--device cpu|cuda] [--repeats 3] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a script (`python bench/sliding_window.py`): find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from model_zoo.device import resolve_device  # noqa: E402
from model_zoo.preprocessing import prepare  # noqa: E402
from model_zoo.registry import get_card, load_model  # noqa: E402
from service.options import resolve_options  # noqa: E402
from service.pipeline import postprocess, predict_probabilities  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.sliding_window import sliding_window_inference  # noqa: E402

ENGINES = ("ours", "ours-noroi", "engine", "monai")


def make_volume(model: str, quick: bool) -> tuple[np.ndarray, dict]:
    """The phantom on the card's grid, (D, H, W) float32 in the network's input units."""
    from train.phantoms import make_phantom

    size_xyz = (256, 256, 120) if quick else (512, 512, 300)
    started = time.perf_counter()
    ct = make_phantom(7, spacing_xyz_mm=(0.8, 0.8, 1.5), size_xyz=size_xyz).ct
    array = prepare(ct, get_card(model).input).array
    return array, {"source_size_xyz": list(size_xyz), "source_spacing_xyz_mm": [0.8, 0.8, 1.5],
                   "model_grid_dhw": list(array.shape), "synthesis_s": round(time.perf_counter() - started, 1)}


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM, MB): unlike ru_maxrss it starts afresh at exec,
    so a worker does not report the parent's phantom synthesis."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(device: str) -> contextlib.AbstractContextManager:
    """MONAI does not autocast itself; on CUDA give it the autocast our engine uses."""
    if not device.startswith("cuda"):
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def run_worker(args: argparse.Namespace) -> None:
    """One timed inference by one engine in this (fresh) process; writes its output and stats."""
    work, device, engine = Path(args.workdir), args.device, args.worker
    volume = np.load(work / "volume.npy")
    backend = "auto" if engine in ("ours", "ours-noroi") else "torch"
    model = load_model(args.model, device=device, backend=backend)
    card = model.card
    options = replace(resolve_options(card), window_device=device, roi=engine == "ours")
    patch, liver = tuple(card.input.patch_size_dhw), card.liver_channel

    def eager(x: torch.Tensor) -> torch.Tensor:  # MONAI's and the bare engine's predictor
        return torch.softmax(model.network(x).float(), dim=1)[:, liver:liver + 1]

    image = torch.from_numpy(volume)[None, None].to(device)

    def infer() -> tuple[np.ndarray, int, int]:
        if engine in ("ours", "ours-noroi"):
            prepared = SimpleNamespace(array=volume)  # all predict_probabilities reads of a PreparedVolume
            outputs, total, skipped = predict_probabilities(model, prepared, options)
            return outputs[0][0], total, skipped
        with torch.inference_mode(), _autocast(device):
            if engine == "engine":
                result = sliding_window_inference(image, patch, eager, overlap=options.overlap,
                                                  batch_size=options.batch_size, mode=options.mode,
                                                  sigma_scale=options.sigma_scale)
                return result.main[0, 0].float().cpu().numpy(), result.windows_total, 0
            from monai.inferers import sliding_window_inference as monai_swi

            out = monai_swi(image, patch, options.batch_size, eager, overlap=options.overlap,
                            mode=options.mode, sigma_scale=options.sigma_scale)
            return out[0, 0].float().cpu().numpy(), 0, 0

    warm_batch = torch.zeros((options.batch_size, 1, *patch), device=device)
    with torch.inference_mode(), _autocast(device):  # warm-up: kernels and allocator, alike for all
        model.runtime(warm_batch) if engine in ("ours", "ours-noroi") else eager(warm_batch)
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started, cpu_started = time.perf_counter(), usage.ru_utime + usage.ru_stime
    probability, total, skipped = infer()
    _sync(device)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    stats = {"engine": engine, "seconds": time.perf_counter() - started,
             "cpu_seconds": usage.ru_utime + usage.ru_stime - cpu_started,
             "windows_total": total, "windows_skipped": skipped, "runtime": model.runtime.name,
             "peak_rss_mb": peak_rss_mb()}
    if device.startswith("cuda"):
        stats["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    np.save(work / f"{engine}.npy", probability)
    (work / f"{engine}.{args.run}.json").write_text(json.dumps(stats))


def _spawn(engine: str, run: int, work: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", engine, "--run", str(run),
               "--workdir", str(work), "--device", args.device, "--model", args.model]
    subprocess.run(command, check=True)
    return json.loads((work / f"{engine}.{run}.json").read_text())


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--model", default=Settings.model_fields["model"].default, help="checkpoint name")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of ours and MONAI (median)")
    parser.add_argument("--quick", action="store_true", help="a 256x256x120 phantom instead of 512x512x300")
    parser.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    if args.worker:
        run_worker(args)
        return

    import monai

    try:  # named in the versions only; a GPU machine carries no OpenVINO (bench/gpu_site.sh)
        from openvino import __version__ as openvino_version
    except ImportError:
        openvino_version = None
    load_before = os.getloadavg()[0]
    volume, info = make_volume(args.model, args.quick)
    with tempfile.TemporaryDirectory(prefix="bench-sw-") as tmp:
        work = Path(tmp)
        np.save(work / "volume.npy", volume)
        runs: dict[str, list[dict]] = {name: [] for name in ENGINES}
        for i in range(args.repeats):  # ABBA: ours, monai, monai, ours, ...
            for engine in (("ours", "monai") if i % 2 == 0 else ("monai", "ours")):
                runs[engine].append(_spawn(engine, i, work, args))
        for engine in ("ours-noroi", "engine"):  # once each: what each part of the speedup is
            runs[engine].append(_spawn(engine, 0, work, args))
        probability = {name: np.load(work / f"{name}.npy") for name in ENGINES}

    masks = {name: postprocess(p) for name, p in probability.items()}
    median = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    cpu = {name: statistics.median(r["cpu_seconds"] for r in rs) for name, rs in runs.items()}
    ours, monai_s = runs["ours"][-1], median["monai"]
    report = {
        "speedup_vs_monai": monai_s / median["ours"],
        "dice_vs_monai": dice(masks["ours"], masks["monai"]),
        # on a shared machine a run waits for the CPU: its CPU seconds show the work it did
        "speedup_vs_monai_cpu_time": cpu["monai"] / cpu["ours"],
        "engine": {"speedup_vs_monai": monai_s / median["engine"],
                   "dice_vs_monai": dice(masks["engine"], masks["monai"]),
                   "max_abs_diff_vs_monai": float(np.abs(probability["engine"] - probability["monai"]).max())},
        "roi": {"speedup_vs_off": median["ours-noroi"] / median["ours"],
                "dice_vs_off": dice(masks["ours"], masks["ours-noroi"]),
                "windows_total": ours["windows_total"], "windows_run": ours["windows_total"] - ours["windows_skipped"],
                "windows_run_off": runs["ours-noroi"][-1]["windows_total"] - runs["ours-noroi"][-1]["windows_skipped"]},
        "runtime": {"speedup_vs_torch": monai_s / median["ours-noroi"],  # every window, our engine and runtime
                    "name": ours["runtime"]},
        "seconds_median": median,
        "seconds_runs": {name: [round(r["seconds"], 2) for r in rs] for name, rs in runs.items()},
        "cpu_seconds_median": cpu,
        "peak_rss_mb": {name: max(r["peak_rss_mb"] for r in rs) for name, rs in runs.items()},
        "liver_ml_model_grid": {name: float(m.sum()) * float(np.prod(get_card(args.model).input.spacing_xyz_mm)) / 1000
                                for name, m in masks.items()},
        "device": describe_device(args.device),
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "versions": {"torch": torch.__version__, "monai": monai.__version__,
                     "openvino": openvino_version and openvino_version.split("-")[0]},
        "model": args.model,
        "settings": {key: value for key, value in resolve_options(get_card(args.model)).reported().items()
                     if key in ("overlap", "mode", "sigma_scale", "batch_size", "skip_air_hu")}
        | {"repeats": args.repeats, "patch_size_dhw": list(get_card(args.model).input.patch_size_dhw)},
        "volume": info,
    }
    if args.device.startswith("cuda"):
        report["peak_cuda_mb"] = {name: max(r["peak_cuda_mb"] for r in rs) for name, rs in runs.items()}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print_table(report)


def print_table(r: dict) -> None:
    load, v, roi = r["load_average_1min"], r["volume"], r["roi"]
    print(f"{r['model']} on {r['device']} (load average {load['start']:.1f} at start, {load['end']:.1f} at end); "
          f"versions {r['versions']}")
    print(f"phantom {v['source_size_xyz']} (x,y,z) at {v['source_spacing_xyz_mm']} mm -> model grid "
          f"{v['model_grid_dhw']} (D,H,W); {r['settings']}\n")
    rows = [("ours: ROI + " + r["runtime"]["name"], "ours"), ("ours, every window", "ours-noroi"),
            ("our engine, eager torch", "engine"), ("MONAI, eager torch", "monai")]
    print(f"{'':32} {'median s':>9} {'runs':>18} {'CPU s':>7} {'peak RSS MB':>12}")
    for label, name in rows:
        runs = " ".join(f"{t:.1f}" for t in r["seconds_runs"][name])
        print(f"{label:32} {r['seconds_median'][name]:9.2f} {runs:>18} {r['cpu_seconds_median'][name]:7.1f} "
              f"{r['peak_rss_mb'][name]:12.0f}")
    print(f"\nspeedup_vs_monai {r['speedup_vs_monai']:.2f}x (CPU time {r['speedup_vs_monai_cpu_time']:.2f}x) "
          f"at dice_vs_monai {r['dice_vs_monai']:.5f}")
    print(f"engine alone: {r['engine']['speedup_vs_monai']:.2f}x, Dice {r['engine']['dice_vs_monai']:.5f}, "
          f"max |p difference| {r['engine']['max_abs_diff_vs_monai']:.1e}")
    print(f"runtime, every window: {r['runtime']['speedup_vs_torch']:.2f}x MONAI")
    print(f"ROI: {roi['windows_run']} of {roi['windows_total']} windows (off: {roi['windows_run_off']}), "
          f"{roi['speedup_vs_off']:.2f}x faster than off, Dice vs off {roi['dice_vs_off']:.5f}")


if __name__ == "__main__":
    main()

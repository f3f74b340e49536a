"""Benchmark: end-to-end POST /segment on a real uvicorn, per stage, alone and with concurrent clients.

Starts `python -m service` on loopback (the bundled model unless --model), uploads a CT-sized
phantom (train.phantoms, seed 7: 512x512x300 at 0.8x0.8x1.5 mm, int16 NIfTI) and reads the server's own per-stage timings from the JSON summary:

1. latency: --repeats requests one after another; median seconds per stage (decode, preprocess,
   inference, postprocess, restore, encode, queued) and the client's wall time, upload included;
2. throughput: --clients clients at once, --requests-per-client each; scans per minute and the
   latency each client saw (queueing included: one worker serves the device).

    .venv/bin/python bench/service.py [--device cpu|cuda] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: find the packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from bench.sliding_window import describe_device  # noqa: E402
from service.settings import Settings  # noqa: E402
from train.phantoms import make_phantom  # noqa: E402

STAGES = ("queued", "decode", "preprocess", "inference", "postprocess", "restore", "encode")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                               cwd=Path(__file__).resolve().parents[1], env={**os.environ, **env},
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the server was not ready in 300 s:\n{log.read_text()[-2000:]}")


def peak_rss_mb(pid: int) -> float | None:
    """The server's peak resident set size so far (VmHWM), in MB; None where /proc cannot tell."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def segment(url: str, data: bytes) -> dict:
    """One POST /segment?output=json; the summary plus the client's wall time."""
    started = time.perf_counter()
    response = httpx.post(f"{url}/segment", params={"output": "json"},
                          files={"file": ("ct.nii.gz", data, "application/gzip")}, timeout=3600)
    wall = time.perf_counter() - started
    if response.status_code != 200:
        raise SystemExit(f"/segment answered {response.status_code}: {response.text[:500]}")
    return response.json() | {"client_wall_s": wall}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=Settings().model, help="checkpoint name (default: the bundled one)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--backend", default="auto", choices=["auto", "openvino", "torch"],
                        help="LIVERSEG_BACKEND: what runs the network on the CPU")
    parser.add_argument("--repeats", type=int, default=3, help="sequential requests (median)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a 256x256x120 volume instead of 512x512x300")
    parser.add_argument("--json", action="store_true", help="print one JSON object, not a table")
    args = parser.parse_args(argv)

    shape = (120, 256, 256) if args.quick else (300, 512, 512)
    phantom = make_phantom(7, spacing_xyz_mm=(0.8, 0.8, 1.5), size_xyz=shape[::-1])
    ct = phantom.ct
    true_liver_ml = float(sitk.GetArrayViewFromImage(phantom.liver).sum()) * 0.8 * 0.8 * 1.5 / 1000
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        folder = Path(tmp)
        sitk.WriteImage(ct, str(folder / "ct.nii.gz"), useCompression=True)
        data = (folder / "ct.nii.gz").read_bytes()
        env = {"LIVERSEG_MODEL": args.model, "LIVERSEG_DEVICE": args.device, "LIVERSEG_BACKEND": args.backend,
               "LIVERSEG_DATA_DIR": str(folder / "var"), "LIVERSEG_LOG_LEVEL": "warning",
               "LIVERSEG_QUEUE_SIZE": str(max(8, 2 * args.clients))}
        process, url = start_server(env, folder / "server.log")
        try:
            segment(url, data)  # warm-up: first-call allocations and kernel selection
            sequential = [segment(url, data) for _ in range(args.repeats)]
            sequential_peak_rss_mb = peak_rss_mb(process.pid)  # one request at a time
            started = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                concurrent = list(pool.map(lambda _: segment(url, data),
                                           range(args.clients * args.requests_per_client)))
            concurrent_wall = time.perf_counter() - started
            server_peak_rss_mb = peak_rss_mb(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)

    first = sequential[0]
    latencies = [r["client_wall_s"] for r in concurrent]
    report = {
        "device": describe_device(args.device) if args.device == "cpu" else first["device"],
        "served_on": first["device"],  # the device and the runtime that ran the network
        "server_peak_rss_mb": server_peak_rss_mb,  # the whole run, concurrent clients included
        "server_peak_rss_mb_sequential": sequential_peak_rss_mb,  # after the sequential requests
        "torch": torch.__version__,
        "model": first["model"],
        "volume": {"size_xyz": list(ct.GetSize()), "spacing_xyz_mm": list(ct.GetSpacing()),
                   "upload_mb": round(len(data) / 2**20, 1)},
        "liver_volume_ml": first["liver_volume_ml"],
        "true_liver_volume_ml": round(true_liver_ml, 1),
        "stage_s_median": {stage: round(statistics.median(r["timings_s"].get(stage, 0.0) for r in sequential), 3)
                           for stage in STAGES},
        "server_total_s_median": round(statistics.median(sum(r["timings_s"].values()) for r in sequential), 2),
        "client_wall_s_median": round(statistics.median(r["client_wall_s"] for r in sequential), 2),
        "concurrent": {"clients": args.clients, "requests": len(concurrent),
                       "wall_s": round(concurrent_wall, 1),
                       "scans_per_minute": round(60 * len(concurrent) / concurrent_wall, 2),
                       "latency_s_median": round(statistics.median(latencies), 1),
                       "latency_s_max": round(max(latencies), 1)},
        "load_average_1min": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    v, c = report["volume"], report["concurrent"]
    print(f"POST /segment end to end: {report['model']} on {report['device']}, served on {report['served_on']} "
          f"(peak RSS of the server {report['server_peak_rss_mb_sequential']} MB one request at a time, "
          f"{report['server_peak_rss_mb']} MB with the clients; torch {report['torch']}, "
          f"load average {report['load_average_1min']:.1f} at the end)")
    print(f"CT {v['size_xyz']} (x,y,z) at {v['spacing_xyz_mm']} mm, {v['upload_mb']} MB upload; "
          f"liver found {report['liver_volume_ml']:.0f} mL (the phantom's: {report['true_liver_volume_ml']:.0f} mL)\n")
    for stage, seconds in report["stage_s_median"].items():
        print(f"  {stage:<12} {seconds:8.2f} s")
    print(f"  {'server':<12} {report['server_total_s_median']:8.2f} s (sum of stages, median of {args.repeats})")
    print(f"  {'client':<12} {report['client_wall_s_median']:8.2f} s (upload to answer)\n")
    print(f"{c['clients']} concurrent clients, {c['requests']} requests: {c['scans_per_minute']:.2f} scans/min, "
          f"latency median {c['latency_s_median']:.1f} s, max {c['latency_s_max']:.1f} s")


if __name__ == "__main__":
    main()

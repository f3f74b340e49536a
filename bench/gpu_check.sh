#!/usr/bin/env bash
# The GPU check, for the day a session is lent a GPU machine: one call, under 8 minutes on a bare
# one (each step has its own time limit), writing one JSON:
#   1. install: a venv that sees the machine's own packages (a GPU image's CUDA torch), then
#      the project with its dev extra (MONAI, pytest) from the machine's package index; or, on a
#      machine that reaches no index (the lent H200s), SITE_TARBALL=.gpu-site/site.tar.xz built
#      here by bench/gpu_site.sh and carried: unpacked beside the image's own torch, no venv;
#   2. the CUDA tests (they skip without a GPU elsewhere) and the engine's tests, on the GPU;
#   3. bench/sliding_window.py and bench/service.py with --device cuda, as JSON.
# Usage, from the repository root:  bash bench/gpu_check.sh   (writes $OUT/gpu_check.json)
#   offline:  SITE_TARBALL=.gpu-site/site.tar.xz bash bench/gpu_check.sh   (carry .gpu-site)
# A step that fails or runs out of time is recorded with its exit status; the rest still run.
set -uo pipefail
OUT=${OUT:-$(pwd)/gpu-check-out}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
mkdir -p "$OUT"
declare -A RC

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, its output in $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  RC[$name]=$?
  tail -n 5 "$OUT/$name.log"
}

step nvidia_smi 20 nvidia-smi
SEES_GPU='import torch; assert torch.cuda.is_available(), "torch sees no GPU"; print(torch.__version__, torch.cuda.get_device_name(0))'
if [ -n "${SITE_TARBALL:-}" ]; then
  SITE=${SITE:-/tmp/liverseg-site}
  export PYTHONPATH="$SITE:$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
  step install 120 bash -c "mkdir -p $SITE && tar -xJf $SITE_TARBALL -C $SITE && $PYTHON -c '$SEES_GPU'"
  PY=$PYTHON
else
  step install 200 bash -c "$PYTHON -m venv --system-site-packages $VENV && $VENV/bin/python -m pip install -q -e '.[dev]' && $VENV/bin/python -c '$SEES_GPU'"
  PY=$VENV/bin/python
fi
step cuda_tests 90 "$PY" -m pytest -q -p no:cacheprovider -k "cuda or oom" \
  tests/service/test_roi.py tests/model_zoo/test_backends.py tests/service/test_worker.py tests/service/test_sliding_window.py
step bench_sliding_window 150 "$PY" bench/sliding_window.py --device cuda --repeats 3 --json
step bench_service 150 "$PY" bench/service.py --device cuda --repeats 3 --clients 4 --requests-per-client 2 --json

RC_JSON=$(for name in "${!RC[@]}"; do printf '"%s": %s,' "$name" "${RC[$name]}"; done)
"$PYTHON" - "$OUT" "{${RC_JSON%,}}" <<'EOF'
import json, sys
from pathlib import Path

out, rcs = Path(sys.argv[1]), json.loads(sys.argv[2])

def read(name):
    text = (out / f"{name}.log").read_text(errors="replace") if (out / f"{name}.log").exists() else ""
    start = text.find("{")  # the benchmarks print one JSON object after any warnings
    try:
        return json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        return {"log_tail": text[-2000:]}

tests = (out / "cuda_tests.log").read_text(errors="replace").strip().splitlines() if (out / "cuda_tests.log").exists() else []
report = {
    "exit_status": rcs,
    "gpu": (out / "nvidia_smi.log").read_text(errors="replace")[:1500] if (out / "nvidia_smi.log").exists() else None,
    "cuda_tests": tests[-1] if tests else None,
    "bench_sliding_window": read("bench_sliding_window"),
    "bench_service": read("bench_service"),
}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps({k: report[k] for k in ("exit_status", "cuda_tests")}, indent=2))
print(f"wrote {out / 'gpu_check.json'}")
EOF

#!/usr/bin/env bash
# The Python packages the GPU check needs that the lent GPU machine's image lacks, for its
# Python 3.12, packed to travel with the working tree (that machine reaches no package index):
# installed here into a scratch folder for CPython 3.12 on x86-64, then packed as one xz
# tarball (the SimpleITK wheel alone is 53 MB; the carry limit is 64 MiB with the tree).
# Usage, from the repository root:  bash bench/gpu_site.sh   (writes .gpu-site/site.tar.xz)
# Then `bash bench/gpu_check.sh` with SITE_TARBALL=.gpu-site/site.tar.xz, carrying .gpu-site.
# Checked on a Python 3.12 venv holding only the image's packages: the app, the CUDA test
# selection and both benchmarks (on the CPU) import and run from it.
set -euo pipefail
DEST=${DEST:-.gpu-site}
PYTHON=${PYTHON:-.venv/bin/python}
# The versions of this venv, so the GPU runs the code as tested here; each one's own needs too
# (pip show NAME | grep Requires) where the image lacks them (it has numpy, torch, anyio, h11,
# click, pillow, packaging, typing-extensions). OpenVINO is left out (the CPU backend; too big to
# carry), as are the PACS, queue and lint tools the check does not run.
PACKAGES="simpleitk pydantic pydantic-core pydantic-settings python-dotenv annotated-types
  typing-inspection annotated-doc fastapi fastapi-offline starlette uvicorn python-multipart pydicom highdicom
  pylibjpeg pylibjpeg-openjpeg pyjpegls opentelemetry-api monai httpx2 httpcore2 truststore"
pinned=$("$PYTHON" -m pip list --format=freeze 2>/dev/null | tr 'A-Z_' 'a-z-' | grep -E "^($(echo $PACKAGES | tr ' ' '|'))==")
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux1_x86_64 \
  --target "$scratch" $pinned
find "$scratch" -name tests -type d -path '*SimpleITK*' -prune -exec rm -rf {} + 2>/dev/null || true
mkdir -p "$DEST"
tar -cf - -C "$scratch" . | xz -9 -T0 > "$DEST/site.tar.xz"
grep -qx "/$DEST/" .git/info/exclude 2>/dev/null || echo "/$DEST/" >> .git/info/exclude
echo "$(echo "$pinned" | wc -l) packages, $(du -h "$DEST/site.tar.xz" | cut -f1) in $DEST/site.tar.xz"

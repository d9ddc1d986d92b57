#!/usr/bin/env bash
# What the real-browser test (tests/browser/) needs, on top of scripts/setup.sh; idempotent, seconds
# when everything is there. Installs:
#   - Debian's chromium (apt-get, as root; CI runs as root) unless /usr/bin/chromium exists. Playwright
#     drives this browser through executable_path: `playwright install` (a download) is never run;
#   - into .venv: the web editor at the version the pinned ComfyUI names in .comfyui/requirements.txt
#     (comfyui-frontend-package), and playwright + pyee (playwright 1.65.2 did not pull pyee itself).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PLAYWRIGHT_VERSION=1.65.2
PYEE_VERSION=13.0.1

if [ ! -x "$PY" ]; then
    echo "setup_browser.sh: no .venv yet; run scripts/setup.sh (or make setup) first" >&2
    exit 1
fi

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = "0" ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq chromium >/dev/null
    else
        echo "setup_browser.sh: chromium is missing; install it with: sudo apt-get install -y chromium" >&2
        exit 1
    fi
fi

frontend=$(grep -E '^comfyui-frontend-package==' .comfyui/requirements.txt | head -n1 || true)
if [ -z "$frontend" ]; then
    echo "setup_browser.sh: .comfyui/requirements.txt names no comfyui-frontend-package version" >&2
    exit 1
fi
want=("$frontend" "playwright==$PLAYWRIGHT_VERSION" "pyee==$PYEE_VERSION")
missing=()
for req in "${want[@]}"; do
    name=${req%%==*}
    version=${req##*==}
    have=$("$PY" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ "$have" = "$version" ] || missing+=("$req")
done
if [ ${#missing[@]} -gt 0 ]; then
    "$PY" -m pip install --quiet "${missing[@]}"
fi
echo "browser test set-up ready: /usr/bin/chromium, ${want[*]}"

#!/usr/bin/env bash
# What the real-browser test (tests/browser/) needs, on top of scripts/setup.sh; idempotent, seconds
# when everything is there. Installs:
#   - Debian's chromium (apt-get, as root; CI runs as root) unless /usr/bin/chromium exists. Playwright
#     drives this browser through executable_path: `playwright install` (a download) is never run;
#   - into .venv: the web editor at the version the pinned ComfyUI names in .comfyui/requirements.txt
#     (comfyui-frontend-package), and playwright + pyee (playwright 1.65.2 did not pull pyee itself);
#   - into each second ComfyUI's .venv-<tag> (scripts/setup.sh --comfyui-archive): the editor version that
#     .comfyui-<tag>/requirements.txt names (its server serves it; playwright runs in .venv only). The
#     template and embedded-docs packages stay out: the pack's templates are listed under the pack's name.
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

# ensure PYTHON REQ...: pip-install those of REQ (name==version) that PYTHON does not have at that version
ensure() {
    local python=$1 req name have missing=()
    shift
    for req in "$@"; do
        name=${req%%==*}
        have=$("$python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
        [ "$have" = "${req##*==}" ] || missing+=("$req")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        "$python" -m pip install --quiet "${missing[@]}"
    fi
}

# frontend_of TREE: the comfyui-frontend-package==X line of that ComfyUI's requirements
frontend_of() {
    local line
    line=$(grep -E '^comfyui-frontend-package==' "$1/requirements.txt" | head -n1 || true)
    if [ -z "$line" ]; then
        echo "setup_browser.sh: $1/requirements.txt names no comfyui-frontend-package version" >&2
        exit 1
    fi
    echo "$line"
}

want=("$(frontend_of .comfyui)" "playwright==$PLAYWRIGHT_VERSION" "pyee==$PYEE_VERSION")
ensure "$PY" "${want[@]}"
ready="/usr/bin/chromium, ${want[*]}"
for tree in .comfyui-*/; do
    [ -d "$tree" ] || continue
    tree=${tree%/}
    python=".venv-${tree#.comfyui-}/bin/python"
    [ -x "$python" ] || continue
    frontend=$(frontend_of "$tree")
    ensure "$python" "$frontend"
    ready+=", $frontend for $tree"
done
echo "browser test set-up ready: $ready"

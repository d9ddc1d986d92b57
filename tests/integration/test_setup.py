"""The one-command set-up is idempotent: a second run downloads nothing and only checks stamps."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile

import pytest

from trainer_cli.locate import REPO_ROOT


def test_second_setup_run_needs_no_network():
    env = dict(os.environ)
    # Any download attempt fails fast: no package index, and every proxy points at a closed port.
    env.update({"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "", "http_proxy": "http://127.0.0.1:9",
                "https_proxy": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
                "HTTPS_PROXY": "http://127.0.0.1:9"})
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup.sh")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installing" not in proc.stdout and "downloading" not in proc.stdout, proc.stdout
    assert "ComfyUI 0.3.75" in proc.stdout


ARCHIVE = os.environ.get("COMFYUI_ARCHIVE") or next(iter(sorted((REPO_ROOT.parent / "shared" / "vendor").glob("comfyui-*.tar.gz"))), None)


def test_second_comfyui_from_its_archive_is_idempotent_too():
    if ARCHIVE is None:
        pytest.skip("no ComfyUI source archive beside the checkout (../shared/vendor/comfyui-*.tar.gz)")
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS="", https_proxy="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9")
    proc = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "setup.sh"), "--comfyui-archive", str(ARCHIVE)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "installing" not in proc.stdout and "unpacked" not in proc.stdout, proc.stdout
    assert "ready: .venv-" in proc.stdout


def test_archive_with_a_wrong_sha256_is_refused(tmp_path):
    archive = tmp_path / "comfyui-9.9.9.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("comfyui-9.9.9/main.py")
        tf.addfile(info, io.BytesIO(b""))
    (tmp_path / "README.md").write_text(f"## {archive.name}\n- sha256: {'0' * 64}\n")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "fetch_comfyui.py"), "--archive", str(archive),
                           "--dest", str(tmp_path / "tree")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "expected " + "0" * 64 in proc.stderr and str(archive) in proc.stderr
    assert not (tmp_path / "tree").exists()
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (tmp_path / "README.md").write_text(f"## {archive.name}\n- sha256: {digest}\n")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "fetch_comfyui.py"), "--archive", str(archive),
                           "--dest", str(tmp_path / "tree")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "tree" / "main.py").is_file()

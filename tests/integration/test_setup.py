"""The one-command set-up is idempotent: a second run downloads nothing and only checks stamps."""

from __future__ import annotations

import os
import subprocess

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

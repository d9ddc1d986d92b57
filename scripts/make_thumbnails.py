"""Write the template browser's thumbnails, ``workflows/<name>.jpg``, one per workflow in ``workflows/``.

Each thumbnail is the workflow as the real ComfyUI editor draws it: a ComfyUI server with this pack
(``tests/comfy_server.py``) and headless Debian chromium (see ``scripts/setup_browser.sh``). The
digits demo is run first, as the template ships it, so its thumbnail shows real outputs: the
reward/loss curves, the before/after sample grid and the accuracy table. The Flux examples need model
files this script does not have, so theirs show the graph. Rerun after changing a workflow::

    .venv/bin/python scripts/make_thumbnails.py
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from comfy_server import CHROMIUM, CHROMIUM_FLAGS, ComfyServer  # noqa: E402

WORKFLOWS = REPO / "workflows"
SIZE = 512  # the template cards show a square image
VIEWPORT = 1600
CLIP = (60, 180, 1380)  # a square of the window that the editor's menus and panels leave free: x, y, side
DEMO = "demo_digits"
# graph square (x, y, side) of the demo's results: curves, summary, sample grid, accuracy table
DEMO_RESULTS = (870, -40, 1480)
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True,  # no template browser on the first visit
                  "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
                  "Comfy.NodeBadge.NodeSourceBadgeMode": "None"}


def fit(page, x: float, y: float, side: float) -> None:
    """Show the graph square at (x, y) of ``side`` graph units in the ``CLIP`` square of the window."""
    page.evaluate("""([x, y, side, cx, cy, size]) => { const ds = window.app.canvas.ds; const s = size / side;
        ds.scale = s; ds.offset[0] = cx / s - x; ds.offset[1] = cy / s - y; window.app.canvas.setDirty(true, true); }""",
                  [x, y, side, *CLIP])
    page.wait_for_timeout(800)


def graph_extent(page) -> tuple[float, float, float]:
    left, top, right, bottom = page.evaluate("""() => { const b = window.app.graph._nodes.map(n => n.getBounding());
        return [Math.min(...b.map(r => r[0])), Math.min(...b.map(r => r[1])),
                Math.max(...b.map(r => r[0] + r[2])), Math.max(...b.map(r => r[1] + r[3]))]; }""")
    side = max(right - left, bottom - top) + 80
    return left - 40 - (side - (right - left) - 80) / 2, top - 40 - (side - (bottom - top) - 80) / 2, side


def run_demo(page, timeout_s: float) -> None:
    page.evaluate("""() => { window.__done = false; for (const t of ['execution_success', 'execution_error'])
        window.app.api.addEventListener(t, () => { window.__done = t; }); }""")
    page.get_by_role("button", name="Run", exact=True).first.click()
    for _ in range(int(timeout_s * 4)):
        done = page.evaluate("() => window.__done")
        if done:
            if done != "execution_success":
                raise RuntimeError("the demo run failed in the editor")
            return
        page.wait_for_timeout(250)
    raise RuntimeError(f"the demo did not finish within {timeout_s:.0f} s")


def save_jpeg(png: bytes, path: Path) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85, optimize=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--timeout", type=float, default=600, help="seconds the demo run may take")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    names = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
    with tempfile.TemporaryDirectory(prefix="leapalign-thumbs-") as scratch, \
            ComfyServer(Path(scratch), extra_args=("--disable-api-nodes",)) as server, sync_playwright() as pw:
        for setting, value in QUIET_SETTINGS.items():
            server.set_setting(setting, value)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": VIEWPORT, "height": VIEWPORT})
        page.goto(server.url)
        page.wait_for_function("() => window.app && window.app.graph && window.app.api", timeout=120_000)
        page.wait_for_timeout(3000)
        for name in names:
            page.keyboard.press("Escape")  # the template browser or a missing-models dialog
            graph = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))
            page.evaluate("graph => window.app.loadGraphData(graph)", graph)
            page.wait_for_timeout(1000)
            page.keyboard.press("Escape")
            if name == DEMO:
                run_demo(page, args.timeout)
                page.wait_for_timeout(3000)  # the output images load after the run ends
                fit(page, *DEMO_RESULTS)
            else:
                fit(page, *graph_extent(page))
            x, y, side = CLIP
            save_jpeg(page.screenshot(clip={"x": x, "y": y, "width": side, "height": side}), WORKFLOWS / f"{name}.jpg")
            print(f"wrote workflows/{name}.jpg")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The example workflows as files: a thumbnail for each, and layouts where no node overlaps another.

The browser test (tests/browser/test_editor.py) checks the same layouts as the editor draws them,
after a run of the demo; these checks need no browser and catch a regenerated file early.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))
TITLE_HEIGHT = 30  # LiteGraph draws the title above a node's pos
IMAGE_NODES = {"SaveImage", "PreviewImage", "LeapAlignPlotMetrics", "LeapAlignDigitsEvaluate", "PreviewAny"}


def test_there_are_workflows():
    assert {"demo_digits", "leapalign_flux_dev_hpsv21_train", "leapalign_flux_dev_eval_lora"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_every_workflow_has_a_square_jpeg_thumbnail(name):
    with Image.open(WORKFLOWS / f"{name}.jpg") as image:
        assert image.format == "JPEG" and image.size == (512, 512)
        colours = image.convert("L").getextrema()
    assert colours[1] - colours[0] > 100, "the thumbnail is blank"


@pytest.mark.parametrize("name", NAMES)
def test_nodes_do_not_overlap_and_leave_room_for_previews(name):
    nodes = json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))["nodes"]
    boxes = [(n.get("title", n["type"]), n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["size"][0],
              n["size"][1] + TITLE_HEIGHT) for n in nodes]
    for i, (ta, xa, ya, wa, ha) in enumerate(boxes):
        for tb, xb, yb, wb, hb in boxes[i + 1:]:
            assert not (xa < xb + wb and xb < xa + wa and ya < yb + hb and yb < ya + ha), f"{ta} overlaps {tb}"
    for node in nodes:
        if node["type"] in IMAGE_NODES:
            assert node["size"][0] >= 420 and node["size"][1] >= 260, (node["type"], node["size"])

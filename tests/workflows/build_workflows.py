"""Write the UI-format test workflows the way ComfyUI's editor saves them, then their API twins.

Run after changing a fixture node's widgets: ``.venv/bin/python tests/workflows/build_workflows.py``.
The UI files are what a user saves (positional ``widgets_values`` with the editor's
``control_after_generate`` companions, links as lists, a Note node); the API twins are converted by
``leapalign-comfy convert`` and checked into the repository so a converter change shows up as a diff.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE_NODES = HERE.parent / "fixture_nodes"
PROMPTS = "a red apple\na blue car\na green tree\na yellow sun\na white cat\na black dog\na purple flower\nan orange boat"

LOADERS = [
    (1, "TinyFluxModelLoader", "Tiny Flux", [0, "fixed"], [], [("MODEL", "MODEL")]),
    (2, "TinyCLIPLoader", "Tiny CLIP", [0, "fixed"], [], [("CLIP", "CLIP")]),
    (3, "TinyVAELoader", "Tiny VAE", [0, "fixed", 0.05], [], [("VAE", "VAE")]),
]

TINY_TRAIN = (
    LOADERS + [
        (4, "LeapAlignPromptList", "Prompts", [PROMPTS, ""], [], [("prompts", "LEAP_PROMPTS"), ("count", "INT")]),
        (5, "LeapAlignRewardLoader", "Reward", ["builtin_brightness", "(none: built-in reward)", "float32",
                                                "1.0, 0.0, 0.0"], [], [("reward", "LEAP_REWARD"), ("info", "STRING")]),
        # method, alpha, hinge_lambda, tau, lora_rank, lora_alpha, lora_targets, learning_rate, weight_decay,
        # grad_clip, ema_decay, steps, batch_size, grad_accumulation, seed (+ companion), width, height,
        # sampling_steps, scheduler, guidance, checkpoint_every, run_name, resume
        (6, "LeapAlignTrainLoRA", "Train LoRA",
         ["leapalign", 0.5, -1.0, 0.1, 4, 4.0, "attention+mlp", 0.001, 0.0001, 1.0, 0.9,
          4, 4, 1, 7, "fixed", 32, 32, 3, "simple", 3.5, 2, "tiny_run", False],
         [("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("reward", "LEAP_REWARD"), ("prompts", "LEAP_PROMPTS")],
         [("model", "MODEL"), ("lora", "LEAP_LORA"), ("metrics", "LEAP_METRICS")]),
        (7, "LeapAlignSaveLoRA", "Save LoRA", ["tiny_lora", "fp32"], [("lora", "LEAP_LORA")], [("lora_name", "STRING")]),
        (8, "Note", None, ["Tiny LeapAlign training graph for the CLI tests (fixture models, brightness reward)."],
         [], []),
    ],
    [(1, 0, 6, 0, "MODEL"), (2, 0, 6, 1, "CLIP"), (3, 0, 6, 2, "VAE"), (5, 0, 6, 3, "LEAP_REWARD"),
     (4, 0, 6, 4, "LEAP_PROMPTS"), (6, 1, 7, 0, "LEAP_LORA")],
)

TINY_SAMPLE = (
    [(1, "TinyFluxModelLoader", "Tiny Flux", [0, "fixed"], [], [("MODEL", "MODEL")]),
     (2, "TinyCLIPLoader", None, [0, "fixed"], [], [("CLIP", "CLIP")]),
     (3, "TinyVAELoader", None, [0, "fixed", 0.05], [], [("VAE", "VAE")]),
     (4, "CLIPTextEncode", "Prompt", ["a red apple on a table"], [("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")]),
     (5, "FluxGuidance", None, [3.5], [("conditioning", "CONDITIONING")], [("CONDITIONING", "CONDITIONING")]),
     (6, "EmptySD3LatentImage", None, [32, 32, 1], [], [("LATENT", "LATENT")]),
     (7, "KSampler", "Sampler", [1, "fixed", 2, 1.0, "euler", "simple", 1.0],
      [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
      [("LATENT", "LATENT")]),
     (8, "VAEDecode", None, [], [("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")]),
     (9, "SaveImage", None, ["tiny_sample"], [("images", "IMAGE")], []),
     (10, "Note", None, ["A tiny stock-node graph for the CLI tests."], [], [])],
    [(1, 0, 7, 0, "MODEL"), (2, 0, 4, 0, "CLIP"), (4, 0, 5, 0, "CONDITIONING"), (5, 0, 7, 1, "CONDITIONING"),
     (5, 0, 7, 2, "CONDITIONING"), (6, 0, 7, 3, "LATENT"), (7, 0, 8, 0, "LATENT"), (3, 0, 8, 1, "VAE"),
     (8, 0, 9, 0, "IMAGE")],
)


def ui_workflow(spec: list, links_spec: list) -> dict:
    """``spec``: (id, type, title, widgets_values, inputs, outputs); ``links_spec``: (src, slot, dst, slot, type)."""
    links, out_links, in_links = [], {}, {}
    for link_id, (src, src_slot, dst, dst_slot, kind) in enumerate(links_spec, start=1):
        links.append([link_id, src, src_slot, dst, dst_slot, kind])
        out_links.setdefault((src, src_slot), []).append(link_id)
        in_links[(dst, dst_slot)] = link_id
    nodes = []
    for order, (node_id, kind, title, widgets, inputs, outputs) in enumerate(spec):
        node = {"id": node_id, "type": kind, "pos": [100 + 300 * (order % 4), 100 + 250 * (order // 4)],
                "size": [280, 120], "flags": {}, "order": order, "mode": 0,
                "inputs": [{"name": n, "type": t, "link": in_links.get((node_id, i))} for i, (n, t) in enumerate(inputs)],
                "outputs": [{"name": n, "type": t, "links": out_links.get((node_id, i), []), "slot_index": i}
                            for i, (n, t) in enumerate(outputs)],
                "properties": {"Node name for S&R": kind}, "widgets_values": widgets}
        if title:
            node["title"] = title
        nodes.append(node)
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}


def main() -> None:
    for name, (spec, links) in {"tiny_train": TINY_TRAIN, "tiny_sample": TINY_SAMPLE}.items():
        ui = HERE / f"{name}.ui.json"
        ui.write_text(json.dumps(ui_workflow(spec, links), indent=2) + "\n")
        subprocess.run([sys.executable, "-m", "trainer_cli.main", "convert", str(ui), "--custom-nodes",
                        str(FIXTURE_NODES), "-o", str(HERE / f"{name}.api.json")], check=True)


if __name__ == "__main__":
    main()

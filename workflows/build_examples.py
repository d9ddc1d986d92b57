"""Write the example workflows: UI format into ``workflows/``, API twins into ``workflows/api/``.

The graphs are declared once below (node, widget values by name, links by input name). Widget order
and socket types come from ComfyUI's own node definitions (``/object_info`` built in-process), so the
UI files are what the editor itself would save. The API twins are the UI files converted with
comfy-cli's converter, the same conversion the headless trainer does. Run after changing a node's
inputs::

    .venv/bin/python workflows/build_examples.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "workflows"

PROMPTS = "\n".join([
    "a photo of a red fox in a snowy forest, golden hour",
    "a cozy reading nook with a large window and rain outside",
    "an astronaut riding a horse on the beach, cinematic lighting",
    "a bowl of ramen with steam rising, studio photo",
    "three wooden chairs around a round table in a sunlit kitchen",
    "a watercolor painting of a lighthouse on a cliff",
])
EVAL_PROMPT = "a photo of a red fox in a snowy forest, golden hour"
LORA_FILE = "leapalign/flux_dev_hpsv21_00001_.safetensors"

# The training recipe as blocks under the training node (the released code's settings): switching method is
# swapping node 17 for another method block (ReFL, DRaFT-K, DRaFT-LV, DRTune, full backprop).
BLOCKS = [
    (17, "LeapAlignMethod", "Method: LeapAlign", {"alpha": 0.3, "tau": 0.1, "hinge_lambda": -1.0,
                                                   "pair_sampling": "released", "weighting": "both"}, {}, (440, 650),
     (400, 200)),
    (18, "LeapAlignOptimizer", "Optimizer", {"learning_rate": 1e-5, "weight_decay": 1e-4, "grad_clip": 1.0,
                                             "ema_decay": 0.995}, {}, (440, 900), (400, 160)),
    (19, "LeapAlignLoRASettings", "LoRA", {"lora_rank": 16, "lora_alpha": 16.0, "lora_targets": "attention+mlp"}, {},
     (440, 1110), (400, 130)),
]

# (id, class_type, title, {widget name: value}, {input name: (source id, source slot)}, (x, y)[, (width, height)])
# Sizes leave room for what a node shows after a run (image previews, text), so nothing overlaps then.
TRAIN = [
    (1, "UNETLoader", "Flux.1-dev", {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}, {}, (0, 0),
     (400, 110)),
    (2, "DualCLIPLoader", "Flux text encoders", {"clip_name1": "clip_l.safetensors",
                                                 "clip_name2": "t5xxl_fp16.safetensors", "type": "flux",
                                                 "device": "default"}, {}, (0, 160), (400, 160)),
    (3, "VAELoader", "Flux VAE", {"vae_name": "ae.safetensors"}, {}, (0, 370), (400, 60)),
    (4, "LeapAlignRewardLoader", "HPSv2.1 reward", {"kind": "hpsv2.1", "model_file": "HPS_v2.1_compressed.pt",
                                                     "precision": "auto", "target_color": "1.0, 0.0, 0.0"}, {},
     (0, 480), (400, 160)),
    (5, "LeapAlignPromptList", "Training prompts", {"text": PROMPTS, "file": ""}, {}, (0, 690), (400, 200)),
    (6, "LeapAlignTrain", "Train LoRA (LeapAlign)", {
        "steps": 300, "batch_size": 4, "grad_accumulation": 1, "seed": 0, "width": 720,
        "height": 720, "sampling_steps": 25, "scheduler": "simple", "guidance": 3.5, "checkpoint_every": 50,
        "run_name": "flux_dev_hpsv21", "resume": False, "sigma_shift": "auto",
    }, {"model": (16, 0), "clip": (2, 0), "vae": (3, 0), "reward": (4, 0), "prompts": (5, 0), "method": (17, 0),
        "optimizer": (18, 0), "lora_settings": (19, 0)}, (440, 0), (400, 600)),
    *BLOCKS,
    (7, "LeapAlignSaveLoRA", "Save LoRA", {"filename_prefix": "leapalign/flux_dev_hpsv21", "dtype": "bf16"},
     {"lora": (6, 1)}, (880, 0), (400, 110)),
    (8, "LeapAlignPlotMetrics", "Reward / loss curves", {"smoothing": 10}, {"metrics": (6, 2), "lora_name": (7, 0)},
     (880, 170), (520, 380)),
    (15, "PreviewAny", "Training summary", {}, {"source": (8, 1)}, (1440, 170), (420, 330)),
    (9, "CLIPTextEncode", "Prompt", {"text": EVAL_PROMPT}, {"clip": (2, 0)}, (0, 940), (400, 200)),
    (10, "FluxGuidance", None, {"guidance": 3.5}, {"conditioning": (9, 0)}, (440, 1290), (320, 90)),
    (11, "EmptySD3LatentImage", None, {"width": 720, "height": 720, "batch_size": 1}, {}, (440, 1420), (320, 140)),
    (12, "KSampler", "Sample with the trained LoRA", {"seed": 42, "steps": 28, "cfg": 1.0, "sampler_name": "euler",
                                                     "scheduler": "simple", "denoise": 1.0},
     {"model": (6, 0), "positive": (10, 0), "negative": (10, 0), "latent_image": (11, 0)}, (880, 610), (400, 330)),
    (13, "VAEDecode", None, {}, {"samples": (12, 0), "vae": (3, 0)}, (880, 980), (400, 60)),
    (14, "SaveImage", None, {"filename_prefix": "leapalign/after_training"}, {"images": (13, 0)}, (1440, 540),
     (520, 600)),
    # Flux's schedule shifted for the training size: training rollouts and the sample above use it.
    (16, "ModelSamplingFlux", "Schedule for 720x720", {"max_shift": 1.15, "base_shift": 0.5, "width": 720,
                                                       "height": 720}, {"model": (1, 0)}, (0, 1190), (400, 170)),
]

EVAL = [
    (1, "UNETLoader", "Flux.1-dev", {"unet_name": "flux1-dev.safetensors", "weight_dtype": "default"}, {}, (0, 0),
     (400, 110)),
    (2, "DualCLIPLoader", "Flux text encoders", {"clip_name1": "clip_l.safetensors",
                                                 "clip_name2": "t5xxl_fp16.safetensors", "type": "flux",
                                                 "device": "default"}, {}, (0, 160), (400, 160)),
    (3, "VAELoader", "Flux VAE", {"vae_name": "ae.safetensors"}, {}, (0, 370), (400, 60)),
    (4, "LoraLoaderModelOnly", "Trained LeapAlign LoRA", {"lora_name": LORA_FILE, "strength_model": 1.0},
     {"model": (1, 0)}, (440, 0), (400, 110)),
    (5, "CLIPTextEncode", "Prompt", {"text": EVAL_PROMPT}, {"clip": (2, 0)}, (440, 160), (400, 200)),
    (6, "FluxGuidance", None, {"guidance": 3.5}, {"conditioning": (5, 0)}, (440, 410), (400, 90)),
    (7, "EmptySD3LatentImage", None, {"width": 1024, "height": 1024, "batch_size": 4}, {}, (440, 550), (400, 140)),
    (8, "KSampler", None, {"seed": 1234, "steps": 50, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
                           "denoise": 1.0},
     {"model": (14, 0), "positive": (6, 0), "negative": (6, 0), "latent_image": (7, 0)}, (880, 0), (400, 330)),
    (9, "VAEDecode", None, {}, {"samples": (8, 0), "vae": (3, 0)}, (880, 380), (400, 60)),
    (10, "SaveImage", None, {"filename_prefix": "leapalign/eval"}, {"images": (9, 0)}, (1320, 0), (520, 600)),
    (11, "LeapAlignRewardLoader", "HPSv2.1 reward", {"kind": "hpsv2.1", "model_file": "HPS_v2.1_compressed.pt",
                                                      "precision": "auto", "target_color": "1.0, 0.0, 0.0"}, {},
     (880, 490), (400, 160)),
    (12, "LeapAlignRewardScore", "Score the images", {"prompts": EVAL_PROMPT, "csv_name": "leapalign/eval_scores.csv"},
     {"reward": (11, 0), "images": (9, 0)}, (880, 700), (400, 160)),
    (13, "PreviewAny", "Scores", {}, {"source": (12, 2)}, (1320, 650), (520, 300)),
    (14, "ModelSamplingFlux", "Schedule for 1024x1024", {"max_shift": 1.15, "base_shift": 0.5, "width": 1024,
                                                         "height": 1024}, {"model": (4, 0)}, (440, 740), (400, 170)),
]

# SD3.5 Medium (the paper's second model, its appendix table). Stability's single-file checkpoint holds
# the MMDiT and the VAE; the three text encoders load with TripleCLIPLoader. ModelSamplingSD3 makes the
# model's shift (3.0) visible and editable. Training rollouts run at cfg 1 (one forward per step, the
# pack's rollout); the sample after training uses SD3.5 Medium's usual cfg 4.5 with an empty negative.
SD35_CKPT = "sd3.5_medium.safetensors"
SD35_LORA_FILE = "leapalign/sd35_medium_hpsv21_00001_.safetensors"
SD35_TEXT = {"clip_name1": "clip_l.safetensors", "clip_name2": "clip_g.safetensors",
             "clip_name3": "t5xxl_fp16.safetensors"}

TRAIN_SD35 = [
    (1, "CheckpointLoaderSimple", "SD3.5 Medium", {"ckpt_name": SD35_CKPT}, {}, (0, 0), (400, 110)),
    (2, "TripleCLIPLoader", "SD3.5 text encoders", SD35_TEXT, {}, (0, 160), (400, 160)),
    (3, "ModelSamplingSD3", "Shift (SD3.5: 3.0)", {"shift": 3.0}, {"model": (1, 0)}, (0, 370), (400, 80)),
    (4, "LeapAlignRewardLoader", "HPSv2.1 reward", {"kind": "hpsv2.1", "model_file": "HPS_v2.1_compressed.pt",
                                                     "precision": "auto", "target_color": "1.0, 0.0, 0.0"}, {},
     (0, 500), (400, 160)),
    (5, "LeapAlignPromptList", "Training prompts", {"text": PROMPTS, "file": ""}, {}, (0, 710), (400, 200)),
    (6, "LeapAlignTrain", "Train LoRA (LeapAlign)", {
        "steps": 300, "batch_size": 4, "grad_accumulation": 1, "seed": 0, "width": 1024,
        "height": 1024, "sampling_steps": 25, "scheduler": "simple", "guidance": 3.5, "checkpoint_every": 50,
        "run_name": "sd35_medium_hpsv21", "resume": False, "sigma_shift": "auto",
    }, {"model": (3, 0), "clip": (2, 0), "vae": (1, 2), "reward": (4, 0), "prompts": (5, 0), "method": (17, 0),
        "optimizer": (18, 0), "lora_settings": (19, 0)}, (440, 0), (400, 600)),
    *BLOCKS,
    (7, "LeapAlignSaveLoRA", "Save LoRA", {"filename_prefix": "leapalign/sd35_medium_hpsv21", "dtype": "bf16"},
     {"lora": (6, 1)}, (880, 0), (400, 110)),
    (8, "LeapAlignPlotMetrics", "Reward / loss curves", {"smoothing": 10}, {"metrics": (6, 2), "lora_name": (7, 0)},
     (880, 170), (520, 380)),
    (15, "PreviewAny", "Training summary", {}, {"source": (8, 1)}, (1440, 170), (420, 330)),
    (9, "CLIPTextEncode", "Prompt", {"text": EVAL_PROMPT}, {"clip": (2, 0)}, (0, 960), (400, 200)),
    (10, "CLIPTextEncode", "Negative (empty)", {"text": ""}, {"clip": (2, 0)}, (0, 1210), (400, 200)),
    (11, "EmptySD3LatentImage", None, {"width": 1024, "height": 1024, "batch_size": 1}, {}, (440, 1290), (320, 140)),
    (12, "KSampler", "Sample with the trained LoRA", {"seed": 42, "steps": 40, "cfg": 4.5, "sampler_name": "euler",
                                                     "scheduler": "simple", "denoise": 1.0},
     {"model": (6, 0), "positive": (9, 0), "negative": (10, 0), "latent_image": (11, 0)}, (880, 610), (400, 330)),
    (13, "VAEDecode", None, {}, {"samples": (12, 0), "vae": (1, 2)}, (880, 980), (400, 60)),
    (14, "SaveImage", None, {"filename_prefix": "leapalign/sd35_after_training"}, {"images": (13, 0)}, (1440, 540),
     (520, 600)),
]

EVAL_SD35 = [
    (1, "CheckpointLoaderSimple", "SD3.5 Medium", {"ckpt_name": SD35_CKPT}, {}, (0, 0), (400, 110)),
    (2, "TripleCLIPLoader", "SD3.5 text encoders", SD35_TEXT, {}, (0, 160), (400, 160)),
    (3, "ModelSamplingSD3", "Shift (SD3.5: 3.0)", {"shift": 3.0}, {"model": (1, 0)}, (0, 370), (400, 80)),
    (4, "LoraLoaderModelOnly", "Trained LeapAlign LoRA", {"lora_name": SD35_LORA_FILE, "strength_model": 1.0},
     {"model": (3, 0)}, (440, 0), (400, 110)),
    (5, "CLIPTextEncode", "Prompt", {"text": EVAL_PROMPT}, {"clip": (2, 0)}, (440, 160), (400, 200)),
    (6, "CLIPTextEncode", "Negative (empty)", {"text": ""}, {"clip": (2, 0)}, (440, 410), (400, 200)),
    (7, "EmptySD3LatentImage", None, {"width": 1024, "height": 1024, "batch_size": 4}, {}, (440, 660), (400, 140)),
    (8, "KSampler", None, {"seed": 1234, "steps": 40, "cfg": 4.5, "sampler_name": "euler", "scheduler": "simple",
                           "denoise": 1.0},
     {"model": (4, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)}, (880, 0), (400, 330)),
    (9, "VAEDecode", None, {}, {"samples": (8, 0), "vae": (1, 2)}, (880, 380), (400, 60)),
    (10, "SaveImage", None, {"filename_prefix": "leapalign/sd35_eval"}, {"images": (9, 0)}, (1320, 0), (520, 600)),
    (11, "LeapAlignRewardLoader", "HPSv2.1 reward", {"kind": "hpsv2.1", "model_file": "HPS_v2.1_compressed.pt",
                                                      "precision": "auto", "target_color": "1.0, 0.0, 0.0"}, {},
     (880, 490), (400, 160)),
    (12, "LeapAlignRewardScore", "Score the images", {"prompts": EVAL_PROMPT, "csv_name": "leapalign/sd35_eval_scores.csv"},
     {"reward": (11, 0), "images": (9, 0)}, (880, 700), (400, 160)),
    (13, "PreviewAny", "Scores", {}, {"source": (12, 2)}, (1320, 650), (520, 300)),
]

WORKFLOWS = {
    "leapalign_flux_dev_hpsv21_train": TRAIN,
    "leapalign_flux_dev_eval_lora": EVAL,
    "leapalign_sd35_medium_hpsv21_train": TRAIN_SD35,
    "leapalign_sd35_medium_eval_lora": EVAL_SD35,
}

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
DEFAULT_SIZE = (360, 140)


def _is_widget(spec) -> bool:
    kind = spec[0]
    if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("forceInput"):
        return False  # a STRING/INT that can only come from a link: a socket, not a widget
    return isinstance(kind, (list, tuple)) or kind in WIDGET_TYPES


def _inputs_in_order(info: dict) -> list[tuple[str, tuple]]:
    out = []
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            out.append((name, info["input"][section][name]))
    return out


def to_ui(graph: list, object_info: dict) -> dict:
    """A litegraph (UI-format) workflow for ``graph``, laid out at the given positions."""
    links, nodes, link_id = [], [], 0
    out_links: dict[tuple[int, int], list[int]] = {}
    for node_id, class_type, _title, _widgets, inputs, _pos, *_size in graph:
        info = object_info[class_type]
        order = [name for name, spec in _inputs_in_order(info) if not _is_widget(spec)]
        for name, (src, slot) in inputs.items():
            if name not in order:
                raise KeyError(f"{class_type} has no socket input {name!r} (sockets: {order})")
            link_id += 1
            src_type = object_info[next(n[1] for n in graph if n[0] == src)]["output"][slot]
            links.append([link_id, src, slot, node_id, order.index(name), src_type])
            out_links.setdefault((src, slot), []).append(link_id)
    for index, (node_id, class_type, title, widgets, _inputs, pos, *size) in enumerate(graph):
        info = object_info[class_type]
        sockets, values = [], []
        for name, spec in _inputs_in_order(info):
            if _is_widget(spec):
                options = spec[1] if len(spec) > 1 else {}
                if name not in widgets:
                    if "default" not in options and not isinstance(spec[0], (list, tuple)):
                        raise KeyError(f"{class_type}: give a value for widget {name!r}")
                    value = options.get("default", spec[0][0] if isinstance(spec[0], (list, tuple)) and spec[0] else None)
                else:
                    value = widgets[name]
                values.append(value)
                if options.get("control_after_generate") or name in ("seed", "noise_seed"):
                    values.append("fixed")
            else:
                link = next((lid for lid, src, slot, dst, dslot, _t in links if dst == node_id and dslot == len(sockets)),
                            None)
                sockets.append({"name": name, "type": spec[0], "link": link})
        unknown = set(widgets) - {n for n, s in _inputs_in_order(info) if _is_widget(s)}
        if unknown:
            raise KeyError(f"{class_type} has no widget(s) {sorted(unknown)}")
        outputs = [{"name": oname, "type": otype, "links": out_links.get((node_id, slot), []), "slot_index": slot}
                   for slot, (oname, otype) in enumerate(zip(info["output_name"], info["output"]))]
        node = {"id": node_id, "type": class_type, "pos": list(pos), "size": list(size[0] if size else DEFAULT_SIZE),
                "flags": {}, "order": index,
                "mode": 0, "inputs": sockets, "outputs": outputs,
                "properties": {"Node name for S&R": class_type}, "widgets_values": values}
        if title:
            node["title"] = title
        nodes.append(node)
    return {"last_node_id": max(n[0] for n in graph), "last_link_id": link_id, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def convert(ui: dict, object_info: dict) -> dict:
    from comfy_cli.workflow_to_api import convert_ui_to_api

    return convert_ui_to_api(ui, object_info)


def main() -> None:
    sys.path.insert(0, str(REPO))
    from trainer_cli.comfy_runtime import boot_comfyui
    from trainer_cli.object_info import build_object_info

    boot_comfyui(cpu=True)
    object_info = build_object_info()
    (OUT / "api").mkdir(parents=True, exist_ok=True)
    for name, graph in WORKFLOWS.items():
        ui = to_ui(graph, object_info)
        (OUT / f"{name}.json").write_text(json.dumps(ui, indent=2) + "\n", encoding="utf-8")
        api = convert(ui, object_info)
        (OUT / "api" / f"{name}.api.json").write_text(json.dumps(api, indent=2) + "\n", encoding="utf-8")
        print(f"wrote workflows/{name}.json and workflows/api/{name}.api.json")


if __name__ == "__main__":
    main()

"""Per-component memory figures at real width (meta-device accounting) and their check against real runs.

    .venv/bin/python -m bench.memory_plan measure    # writes leapalign/assets/memory_figures.json
    .venv/bin/python -m bench.memory_plan validate   # real CPU runs at small sizes vs the plan (<= 10%)
    .venv/bin/python -m bench.memory_plan table      # docs/benchmarks/memory_plan.json + the page section

``measure`` runs the real ComfyUI Flux.1-dev model classes (hidden 3072, 2537 tokens = 2025 image
tokens at 720x720 + 512 text tokens), the real Flux VAE decoder (720x720) and open_clip's ViT-H-14
(224, HPSv2.1's tower) on the ``meta`` device and counts what autograd saves (see ``bench.accounting``);
weights are counted from parameter shapes. Nothing real-width is ever allocated.
``validate`` computes real (CPU, bf16, real width, 1-2 blocks, 256-384 px) forward passes under the
same counter and compares with what ``leapalign.memory_plan`` predicts from the 720x720 figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.accounting import ModuleMeter, SavedBytes, _FlashCost, parameter_count  # noqa: E402

FIGURES = REPO / "leapalign" / "assets" / "memory_figures.json"
VALIDATION_OUT = REPO / "docs" / "benchmarks" / "memory_plan_validation.json"
IMAGE, TEXT_TOKENS, DTYPE = 720, 512, torch.bfloat16


@contextlib.contextmanager
def flash_sdpa():
    """``scaled_dot_product_attention`` saves what a flash kernel saves when run on ``meta``."""
    import comfy.ops
    import torch.nn.functional as F

    real_comfy, real_f = comfy.ops.scaled_dot_product_attention, F.scaled_dot_product_attention

    def choose(real):
        def sdpa(q, k, v, *args, **kwargs):
            return _FlashCost.apply(q, k, v) if q.is_meta else real(q, k, v, *args, **kwargs)
        return sdpa

    comfy.ops.scaled_dot_product_attention, F.scaled_dot_product_attention = choose(real_comfy), choose(real_f)
    try:
        yield
    finally:
        comfy.ops.scaled_dot_product_attention, F.scaled_dot_product_attention = real_comfy, real_f


def _flux_config(depth: int, singles: int) -> dict:
    from bench.gpu_flux import FLUX_DEV

    cfg = {k: v for k, v in FLUX_DEV.items() if k != "image_model"}
    return {**cfg, "depth": depth, "depth_single_blocks": singles}


def build_flux(depth: int, singles: int, device: str):
    import comfy.ldm.flux.math
    import comfy.ldm.flux.model
    import comfy.ldm.modules.attention
    import comfy.ops

    # ComfyUI on a GPU runs Flux attention through torch's SDPA (flash); its CPU default is sub-quadratic.
    comfy.ldm.flux.math.optimized_attention = comfy.ldm.modules.attention.attention_pytorch
    with torch.device(device):
        model = comfy.ldm.flux.model.Flux(image_model=None, dtype=DTYPE, device=device,
                                          operations=comfy.ops.disable_weight_init, **_flux_config(depth, singles))
    if device != "meta":
        from bench.gpu_flux import _init_
        _init_(model, 0)
    return model.requires_grad_(False)


def measure_flux(depth: int, singles: int, image: int, text_tokens: int, device: str = "meta",
                 lora_rank: int = 16) -> dict:
    """Saved activation bytes of one velocity call with a LoRA, per block and in total."""
    from bench import comfy_env as env
    from leapalign.lora import LoRAAdapter, LoRAConfig

    env.boot()
    seam = env.pack_module("nodes.autograd_seam").OutOfPlaceAdds
    model = build_flux(depth, singles, device)
    lora = LoRAAdapter(model, LoRAConfig(rank=lora_rank)).to(device)
    side = image // 8
    x = torch.randn(1, 16, side, side, dtype=DTYPE).to(device)
    ctx = torch.randn(1, text_tokens, 4096, dtype=DTYPE).to(device)
    y = torch.randn(1, 768, dtype=DTYPE).to(device)
    t, g = torch.full((1,), 0.5).to(device), torch.full((1,), 3.5).to(device)
    counter = SavedBytes(list(model.parameters()) + list(lora.parameters()))
    blocks = {f"double_blocks.{i}": b for i, b in enumerate(model.double_blocks)}
    blocks.update({f"single_blocks.{i}": b for i, b in enumerate(model.single_blocks)})
    meter = ModuleMeter(counter, blocks)
    start = time.perf_counter()
    with flash_sdpa(), seam(), lora.applied(model), torch.enable_grad(), counter.recording():
        out = model(x, t, ctx, y, guidance=g)
    if device != "meta":
        out.float().square().mean().backward()
    meter.close()
    tokens = (side // 2) ** 2 + text_tokens
    return {"depth": depth, "singles": singles, "image": image, "text_tokens": text_tokens, "tokens": tokens,
            "device": device, "activation_bytes": counter.activation_bytes,
            "activation_bytes_by_pointer": sum(counter.by_pointer.values()), "weight_bytes_saved": counter.weight_bytes,
            "block_saved": meter.saved, "block_inputs": meter.inputs, "params": parameter_count(model),
            "lora_params": parameter_count(lora), "seconds": time.perf_counter() - start}


def _vae_modules(decoder) -> dict:
    from comfy.ldm.modules.diffusionmodules.model import AttnBlock, ResnetBlock, Upsample

    return {name: m for name, m in decoder.named_modules() if isinstance(m, (ResnetBlock, AttnBlock, Upsample))}


def measure_decoder(image: int = IMAGE, device: str = "meta") -> dict:
    from bench import comfy_env as env
    from bench.gpu_flux import FLUX_VAE

    env.boot()
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.model as vae_model

    with torch.device(device):
        vae = comfy.ldm.models.autoencoder.AutoencoderKL(**FLUX_VAE).to(DTYPE).requires_grad_(False)
    if device != "meta":
        from bench.gpu_flux import _init_
        _init_(vae, 0)
    decoder = vae.decoder
    for m in decoder.modules():
        if isinstance(m, vae_model.AttnBlock):
            m.optimized_attention = vae_model.pytorch_attention
    z = torch.zeros(1, 16, image // 8, image // 8, dtype=DTYPE, device=device, requires_grad=True)
    counter = SavedBytes(decoder.parameters())
    meter = ModuleMeter(counter, _vae_modules(decoder))
    with flash_sdpa(), torch.enable_grad(), counter.recording():
        decoder(z)
    meter.close()
    return {"image": image, "pixels": image * image, "activation_bytes": counter.activation_bytes,
            "activation_bytes_by_pointer": sum(counter.by_pointer.values()),
            "segment_saved": meter.saved, "segment_inputs": meter.inputs, "params": parameter_count(decoder)}


def measure_vit_h(image: int = 224, device: str = "meta") -> dict:
    import open_clip

    from bench import comfy_env as env

    env.boot()  # flash_sdpa patches comfy.ops too
    config = open_clip.get_model_config("ViT-H-14")
    with torch.device("meta"):  # built on meta always: open_clip would initialise 4 GB of fp32 weights
        model = open_clip.CLIP(**config).to(DTYPE).requires_grad_(False)
    visual = model.visual
    if device != "meta":  # only the image tower gets real memory (bf16, 1.2 GiB)
        from bench.gpu_flux import _init_
        visual = visual.to_empty(device=device)
        _init_(visual, 0)
    x = torch.zeros(1, 3, image, image, dtype=DTYPE, device=device, requires_grad=True)
    counter = SavedBytes(visual.parameters())
    blocks = {f"resblocks.{i}": b for i, b in enumerate(visual.transformer.resblocks)}
    meter = ModuleMeter(counter, blocks)
    with flash_sdpa(), torch.enable_grad(), counter.recording():
        visual(x)
    meter.close()
    return {"image": image, "activation_bytes": counter.activation_bytes, "segment_saved": meter.saved,
            "activation_bytes_by_pointer": sum(counter.by_pointer.values()),
            "segment_inputs": meter.inputs, "params": parameter_count(model), "visual_params": parameter_count(visual)}


def t5_xxl_params() -> int:
    """T5-XXL encoder parameters from ComfyUI's own config (embeddings + 24 gated-FF layers)."""
    import comfy.text_encoders.t5

    cfg = json.loads((Path(comfy.text_encoders.t5.__file__).parent / "t5_config_xxl.json").read_text())
    d, ff, inner = cfg["d_model"], cfg["d_ff"], cfg["num_heads"] * cfg["d_kv"]
    per_layer = 4 * d * inner + 3 * d * ff + 2 * d
    return cfg["vocab_size"] * d + cfg["num_layers"] * per_layer + d + cfg["relative_attention_num_buckets"] * cfg["num_heads"]


def _segments(saved: dict, inputs: dict, prefix: str = "") -> dict:
    keys = [k for k in saved if k.startswith(prefix)]
    return {"saved": sum(saved[k] for k in keys), "inputs": sum(inputs[k] for k in keys),
            "max_saved": max(saved[k] for k in keys), "count": len(keys)}


def figures() -> dict:
    """Every component at real width, per token / per pixel where it scales."""
    one = measure_flux(1, 1, IMAGE, TEXT_TOKENS)
    two = measure_flux(2, 2, IMAGE, TEXT_TOKENS)
    tokens = one["tokens"]
    double, single = one["block_saved"]["double_blocks.0"], one["block_saved"]["single_blocks.0"]
    rest = one["activation_bytes"] - double - single
    check = rest + 2 * double + 2 * single
    full = _flux_config(19, 38)
    import comfy.ldm.flux.model

    from bench import comfy_env as env  # noqa: F401  (booted by measure_flux)

    with torch.device("meta"):
        import comfy.ops
        dev = comfy.ldm.flux.model.Flux(image_model=None, dtype=DTYPE, device="meta",
                                        operations=comfy.ops.disable_weight_init, **full)
    from leapalign.lora import LoRAAdapter, LoRAConfig

    lora_params = {rank: parameter_count(LoRAAdapter(dev, LoRAConfig(rank=rank)).to("meta")) for rank in (16,)}
    per = {"double_saved": double / tokens, "single_saved": single / tokens, "rest_saved": rest / tokens,
           "double_inputs": one["block_inputs"]["double_blocks.0"] / tokens,
           "single_inputs": one["block_inputs"]["single_blocks.0"] / tokens}
    dec = measure_decoder()
    vit = measure_vit_h()
    dec_seg = _segments(dec["segment_saved"], dec["segment_inputs"])
    vit_seg = _segments(vit["segment_saved"], vit["segment_inputs"])
    return {
        "note": "bytes saved for backward, bf16 activations, measured by bench/memory_plan.py on the meta device",
        "activation_dtype_bytes": 2,
        "flux": {"hidden_size": 3072, "measured_tokens": tokens, "image": IMAGE, "text_tokens": TEXT_TOKENS,
                 "per_token": per, "blocks_2x2_check": {"predicted": check, "measured": two["activation_bytes"]},
                 "flux1_dev_params": parameter_count(dev), "double_blocks": 19, "single_blocks": 38,
                 "double_block_params": parameter_count(dev.double_blocks[0]),
                 "single_block_params": parameter_count(dev.single_blocks[0]),
                 "lora_params_rank16_attention_mlp": lora_params[16]},
        "vae_decoder": {"measured_pixels": dec["pixels"], "params": dec["params"],
                        "saved_per_pixel": dec["activation_bytes"] / dec["pixels"],
                        "checkpointed_inputs_per_pixel": dec_seg["inputs"] / dec["pixels"],
                        "unsegmented_saved_per_pixel": (dec["activation_bytes"] - dec_seg["saved"]) / dec["pixels"],
                        "max_segment_per_pixel": dec_seg["max_saved"] / dec["pixels"], "segments": dec_seg["count"]},
        "hpsv2.1": {"image": 224, "params": vit["params"], "visual_params": vit["visual_params"],
                    "saved": vit["activation_bytes"], "checkpointed_inputs": vit_seg["inputs"],
                    "unsegmented_saved": vit["activation_bytes"] - vit_seg["saved"],
                    "max_segment": vit_seg["max_saved"], "segments": vit_seg["count"]},
        "text_encoders": {"t5xxl_params": t5_xxl_params(), "clip_l_params": 123_060_480},
    }


# real CPU runs that fit a few GiB: (kind, double blocks, single blocks, image side, text tokens)
VALIDATION = (("flux", 1, 0, 256, 64), ("flux", 0, 1, 384, 64), ("flux", 1, 1, 256, 128), ("flux", 1, 2, 320, 96),
              ("decoder", 0, 0, 256, 0), ("decoder", 0, 0, 320, 0), ("reward", 0, 0, 224, 0))


def predicted(kind: str, depth: int, singles: int, image: int, text_tokens: int) -> float:
    """What ``leapalign.memory_plan`` predicts for one velocity call / one decode of this configuration."""
    from leapalign import memory_plan as mp

    shape = replace(mp.flux1_dev(image, image), double_blocks=depth, single_blocks=singles, text_tokens=text_tokens,
                    velocity_calls=1)
    if kind == "decoder":
        return mp._decoder(shape, mp.MemoryOptions())[0]
    if kind == "reward":  # HPSv2.1's image tower, activations in bf16 as measured
        return mp._reward(replace(shape, reward=mp.hpsv21_reward(2)), mp.MemoryOptions())[1]
    return mp._velocity(shape, mp.MemoryOptions())[0]


def validate(log=print) -> list[dict]:
    """Real-width CPU runs (bf16) at small sizes against the plan: the acceptance is within 10%."""
    import gc

    rows = []
    for kind, depth, singles, image, text in VALIDATION:
        start = time.perf_counter()
        if kind == "flux":
            real = measure_flux(depth, singles, image, text, device="cpu")
        elif kind == "decoder":
            real = measure_decoder(image, device="cpu")
        else:
            real = measure_vit_h(image, device="cpu")
        gc.collect()
        guess = predicted(kind, depth, singles, image, text)
        row = {"kind": kind, "double_blocks": depth, "single_blocks": singles, "image": image, "text_tokens": text,
               "measured_bytes": real["activation_bytes_by_pointer"], "measured_bytes_by_base": real["activation_bytes"],
               "predicted_bytes": guess, "seconds": time.perf_counter() - start}
        row["error"] = guess / row["measured_bytes"] - 1
        rows.append(row)
        log(f"  {kind} {depth}+{singles} blocks {image}px {text} text: measured {row['measured_bytes'] / 2**20:.1f} MiB, "
            f"predicted {guess / 2**20:.1f} MiB ({row['error']:+.1%}), {row['seconds']:.0f} s")
    return rows


CARDS, BATCHES = (24, 48, 80), (1, 2, 4)
STANDARD_CARDS = (12, 16, 24, 32, 40, 48, 80, 96, 141)
TABLE_OUT = REPO / "docs" / "benchmarks" / "memory_plan.json"
PAGE = REPO / "docs" / "benchmarks" / "memory.md"


def smallest_card(shape) -> int | None:
    from leapalign import memory_plan as mp

    for card in STANDARD_CARDS:
        if mp.choose(shape, card).peak <= card * mp.GiB * mp.HEADROOM:
            return card
    return None


def table() -> dict:
    """The preset's plan for Flux.1-dev (fp8 and bf16 weights), 720x720, HPSv2.1, per card and batch."""
    from leapalign import memory_plan as mp

    rows = []
    for weights, label in ((1, "fp8"), (2, "bf16")):
        for card in CARDS:
            for batch in BATCHES:
                shape = mp.flux1_dev(720, 720, batch, weight_bytes=weights)
                p = mp.choose(shape, card)
                rows.append({"weights": label, "card_gib": card, "batch": batch, "options": p.options.enabled(),
                             "predicted_peak_bytes": p.peak, "fits": p.peak <= card * mp.GiB * mp.HEADROOM,
                             "largest_component": p.largest(), "components": p.components, "notes": p.notes,
                             "smallest_card_gib": smallest_card(shape)})
    return {"model": "Flux.1-dev, 720x720, N=25 LeapAlign (two velocity calls with grad), rank-16 LoRA, "
                     "HPSv2.1 reward, T5-XXL + CLIP-L text encoders in fp8",
            "headroom": mp.HEADROOM, "rows": rows,
            "no_options_peak_bytes": mp.plan(mp.flux1_dev()).peak}


def _gib(x: float) -> str:
    return f"{x / 2**30:.1f}"


def page(tab: dict, rows: list[dict]) -> str:
    from leapalign import memory_plan as mp

    best = mp.choose(mp.flux1_dev(), 24)
    lines = ["# Memory plan: what a LeapAlign step needs on a GPU", "",
             "Generated by `.venv/bin/python -m bench.memory_plan table` (figures: `measure`, check: `validate`). "
             "**All GPU figures on this page are predictions**: no GPU was available when they were made. "
             "They come from bytes autograd saves for backward, counted on the `meta` device for the real "
             "modules at real width (one Flux.1-dev block at 720x720 = 2025 image + 512 text tokens, the Flux VAE "
             "decoder at 720x720, open_clip ViT-H-14 at 224), plus weight bytes from parameter shapes, summed by "
             "`leapalign/memory_plan.py` (the formula is in its docstring). `bench/gpu_flux.py --preset 'fit 24 GB'` "
             "measures the real peak on a GPU when one is lent.", "",
             f"Model: {tab['model']}. GiB = 2^30 bytes; a card counts {tab['headroom']:.0%} of its memory as usable "
             "(CUDA context, workspaces, fragmentation).", "",
             "## Acceptance: Flux.1-dev fp8, 720x720, batch 1, HPSv2.1 on a 24 GB card", "",
             f"Predicted peak with the `fit 24 GB` preset: **{_gib(best.peak)} GiB** (target <= 22 GB: "
             f"**{'met' if best.peak <= 22 * 2**30 else 'not met'}**). Options chosen: {', '.join(best.options.enabled())}. "
             f"Without any option the same step would need {_gib(tab['no_options_peak_bytes'])} GiB.", "",
             "| component | GiB |", "|---|---|"]
    lines += [f"| {k} | {_gib(v)} |" for k, v in sorted(best.components.items(), key=lambda kv: -kv[1]) if v]
    lines += ["", "## Cards x batch", "",
              "| weights | card | batch | predicted peak (GiB) | fits | options the preset picks | largest component | smallest card that fits (preset, weight offload allowed) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in tab["rows"]:
        lines.append(f"| {r['weights']} | {r['card_gib']} GB | {r['batch']} | {_gib(r['predicted_peak_bytes'])} | "
                     f"{'yes' if r['fits'] else '**no**'} | {', '.join(r['options']) or 'none'} | "
                     f"{r['largest_component']} | {r['smallest_card_gib'] or '> 141'} GB |")
    lines += ["", "Where a batch does not fit, the largest part is the recompute of the biggest checkpointed segment "
              "(a VAE decoder stage at full resolution, which grows with the batch): train with batch 1 and "
              "`grad_accumulation` instead (same effective batch; the plan scales activations with the micro-batch). "
              "With `weight_offload`, ComfyUI's low-VRAM loading streams part of the transformer weights per layer, "
              "which costs speed.", "",
              "## The model against real runs (CPU, real width, bf16)", "",
              "Each row computes a real forward + backward on the CPU (Flux.1-dev width 3072 with 1-3 blocks, "
              "the real Flux VAE decoder, or the ViT-H-14 image tower of HPSv2.1) and counts the activation bytes autograd saved (unique storages, as "
              "`bench/memory.py` counts them); the prediction is the plan's figure for that configuration, scaled "
              "from the 720x720 meta-device measurement by block count and tokens (pixels for the decoder; the reward runs at its fixed 224x224).", "",
              "| component | blocks (double+single) | image | text tokens | measured MiB | predicted MiB | error |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        blocks = f"{r['double_blocks']}+{r['single_blocks']}" if r["kind"] == "flux" else "-"
        blocks = "32 (ViT-H-14 image tower)" if r["kind"] == "reward" else blocks
        lines.append(f"| {r['kind']} | {blocks} | {r['image']}x{r['image']} | {r['text_tokens'] or '-'} | "
                     f"{r['measured_bytes'] / 2**20:.1f} | {r['predicted_bytes'] / 2**20:.1f} | {r['error']:+.1%} |")
    worst = max(abs(r["error"]) for r in rows)
    lines += ["", f"Largest error: {worst:.1%} (acceptance: within 10%). What the CPU check does not cover: the "
              "checkpointed figures (a checkpoint keeps its inputs, counted from input shapes), the recompute "
              "factor 2 and the allocator's behaviour on a GPU; `bench/gpu_flux.py --preset` compares those.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["measure", "validate", "table"])
    args = parser.parse_args(argv)
    if args.what == "measure":
        from leapalign.atomic import atomic_write_text

        out = figures()
        atomic_write_text(FIGURES, json.dumps(out, indent=1) + "\n")
        print(json.dumps(out, indent=1))
    elif args.what == "validate":
        from leapalign.atomic import atomic_write_text

        rows = validate()
        atomic_write_text(VALIDATION_OUT, json.dumps(rows, indent=1) + "\n")
    else:
        from leapalign.atomic import atomic_write_text

        tab = table()
        atomic_write_text(TABLE_OUT, json.dumps(tab, indent=1) + "\n")
        atomic_write_text(PAGE, page(tab, json.loads(VALIDATION_OUT.read_text())))
        print(PAGE.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

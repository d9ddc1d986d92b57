"""Every memory option of the training node leaves the gradients unchanged (float tolerance)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leapalign.lora import TARGET_PRESETS, LoRAAdapter, LoRAConfig


def _lora(root, seed=3):
    lora = LoRAAdapter(root, LoRAConfig(rank=4, alpha=8.0, targets=TARGET_PRESETS["attention+mlp+modulation"]))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return lora


def _two_leap_grads(adapters, clone, lora, positive, x):
    """Two chained velocity calls with grad (as a LeapAlign leap pair), backward inside the sampler call."""
    lora.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)

    def body(velocity, x_init, grid, inner):
        inner.diffusion_model.requires_grad_(False)
        v1 = velocity(x, torch.tensor([0.8]))
        x2 = x - 0.4 * v1
        v2 = velocity(x2, torch.tensor([0.4]))
        (x2 - 0.4 * v2).square().mean().backward()
        return None, x_init

    with pack_autograd(adapters):
        adapters.sample_with(clone, positive, torch.zeros_like(x), torch.tensor([1.0, 0.0]), body,
                             prepare_model=adapters.prepare_for_autograd)
    return [p.grad.clone() for p in lora.parameters()] + [x.grad.clone()]


def pack_autograd(adapters):
    import sys

    return sys.modules[adapters.__name__.rsplit(".", 1)[0] + ".autograd_seam"].autograd_enabled()


def _close(a, b, rtol=1e-5):
    for x, y in zip(a, b):
        scale = y.abs().max().clamp_min(1e-12)
        assert (x - y).abs().max() / scale < rtol


def test_block_checkpointing_gives_the_same_gradients(comfy, pack_import, flux_cond):
    from comfy_fixtures import TINY_FLUX_CONFIG, build_tiny_flux

    adapters, memory = pack_import("nodes.adapters"), pack_import("nodes.memory_options")
    # two blocks of each kind: a recompute that ran the wrong block (late-binding closure) would show
    model = build_tiny_flux(seed=0, config={**TINY_FLUX_CONFIG, "depth": 2, "depth_single_blocks": 2})
    lora = _lora(model.model.diffusion_model)
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    reference = _two_leap_grads(adapters, adapters.training_clone(model, lora), lora, flux_cond, x)
    checked = _two_leap_grads(adapters, memory.block_checkpointed_clone(model, lora), lora, flux_cond, x)
    assert all(g.abs().max() > 0 for g in reference)
    _close(checked, reference)


def test_decoder_checkpointing_gives_the_same_gradients(comfy, pack_import, tiny_flux, tiny_vae):
    from leapalign.checkpointing import checkpointed_modules, modules_of_type

    adapters, memory = pack_import("nodes.adapters"), pack_import("nodes.memory_options")
    with pack_autograd(adapters):
        decode = adapters.make_decoder(tiny_vae, tiny_flux)
        latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))

        def grad():
            z = latent.clone().requires_grad_(True)
            (decode(z) * torch.linspace(0, 1, 64)).sum().backward()
            return [z.grad]

        reference = grad()
        segments = modules_of_type(tiny_vae.first_stage_model.decoder, memory.VAE_SEGMENTS)
        with checkpointed_modules(segments) as count:
            checked = grad()
    assert count >= 3
    _close(checked, reference)


def _tiny_hps(layers=4):
    import open_clip

    from leapalign.rewards.hps import HPSv21Reward
    from leapalign.rewards.tiny_checkpoints import TINY_IMAGE_SIZE, TINY_OPEN_CLIP_CONFIG

    cfg = {**TINY_OPEN_CLIP_CONFIG, "vision_cfg": {**TINY_OPEN_CLIP_CONFIG["vision_cfg"], "layers": layers}}
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    return HPSv21Reward(model, open_clip.SimpleTokenizer(context_length=77), TINY_IMAGE_SIZE)


def test_reward_checkpointing_and_bf16_keep_the_gradients(comfy, pack_import):
    from leapalign.checkpointing import checkpointed_modules, repeated_blocks

    memory = pack_import("nodes.memory_options")
    reward = _tiny_hps()
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))

    def grad():
        x = images.clone().requires_grad_(True)
        reward(x, ["a photo of a cat", "a red car"]).sum().backward()
        return [x.grad]

    reference = grad()
    with checkpointed_modules(repeated_blocks(reward)) as count:
        checked = grad()
    assert count >= 4
    _close(checked, reference)
    with memory.reward_dtype(reward, torch.bfloat16):
        assert next(reward.parameters()).dtype == torch.bfloat16
        low = grad()
    assert next(reward.parameters()).dtype == torch.float32  # cast back for the graph's other nodes
    cos = torch.nn.functional.cosine_similarity(low[0].flatten(), reference[0].flatten(), dim=0)
    assert cos > 0.99  # bf16 rounding only (a wrong gradient would not point the same way)


def test_text_encoder_offload_keeps_the_conditioning_and_unloads(comfy, pack_import, tiny_clip):
    import comfy.model_management as mm

    adapters, memory = pack_import("nodes.adapters"), pack_import("nodes.memory_options")
    prompts = ["a photo of a cat", "a red car"]
    reference = adapters.PromptEncoder(tiny_clip)(prompts)[0][0]
    encoder = adapters.PromptEncoder(tiny_clip)
    assert any(lm.model is not None and lm.model.is_clone(tiny_clip.patcher) for lm in mm.current_loaded_models)
    memory.offload_text_encoders(tiny_clip, encoder, prompts)
    assert not any(lm.model is not None and lm.model.is_clone(tiny_clip.patcher) for lm in mm.current_loaded_models)
    assert torch.equal(encoder(prompts)[0][0], reference)
    # later batches come from the cache: the encoder is not loaded again
    assert not any(lm.model is not None and lm.model.is_clone(tiny_clip.patcher) for lm in mm.current_loaded_models)


def test_memory_setup_plans_the_graph_and_reserves_vram_for_offload(comfy, pack_import, tiny_flux, tiny_vae,
                                                                   tiny_clip):
    import comfy.model_management as mm

    memory = pack_import("nodes.memory_options")
    lora = _lora(tiny_flux.model.diffusion_model)
    setup = memory.MemorySetup("fit 24 GB", tiny_flux, tiny_vae, _tiny_hps(), tiny_clip, lora, 64, 64, 2)
    assert setup.shape.double_blocks == 1 and setup.shape.lora_params == sum(p.numel() for p in lora.parameters())
    assert setup.options.enabled() == []  # a tiny model fits 24 GB as it is
    import server

    sent = []

    class FakeServer:
        def send_sync(self, event, data, sid=None):
            sent.append((event, data))

    had, previous = hasattr(server.PromptServer, "instance"), getattr(server.PromptServer, "instance", None)
    server.PromptServer.instance = FakeServer()
    try:
        text = setup.report()
    finally:
        if had:
            server.PromptServer.instance = previous
        else:
            del server.PromptServer.instance
    assert "predicted peak" in text
    assert sent == [(memory.MEMORY_PLAN_EVENT, {"text": text, "predicted_peak_bytes": setup.plan.peak, "options": []})]
    before = mm.EXTRA_RESERVED_VRAM
    with memory.reserved_vram(2**30):
        assert mm.EXTRA_RESERVED_VRAM == before + 2**30
    assert mm.EXTRA_RESERVED_VRAM == before
    setup.options = memory.MemoryOptions(checkpoint_blocks=True)
    assert setup.training_clone(tiny_flux, lora, lambda m, lo: None) is not None


def test_gpu_flux_preset_path_runs_every_option_at_toy_size(tmp_path):
    """bench/gpu_flux.py --preset (the GPU check of the plan) goes through every option on CPU."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "preset.json"
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_flux", "--dry-run", "--preset", "fit 24 GB",
                           "--out", str(out)], cwd=repo, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads(out.read_text())["preset_run"]
    assert len(run["options"]) == 6 and run["predicted_peak_bytes"] > 0
    assert run["seconds_per_step"] > 0 and run["measured_peak_bytes"] is None  # no GPU: no measured peak


def _node_graph(run_name: str, preset: str) -> dict:
    """The tiny world's training graph (as tests/integration/test_training_graph.py builds it), 2 steps."""
    return {
        "1": {"class_type": "TinyFluxModelLoader", "inputs": {"seed": 0}},
        "2": {"class_type": "TinyCLIPLoader", "inputs": {"seed": 0}},
        "3": {"class_type": "TinyVAELoader", "inputs": {"seed": 0, "weight_std": 0.2}},
        "4": {"class_type": "LeapAlignRewardLoader",
              "inputs": {"kind": "builtin_color_target", "model_file": "(none: built-in reward)",
                         "precision": "float32", "target_color": "1.0, 0.0, 0.0"}},
        "5": {"class_type": "LeapAlignPromptList", "inputs": {"text": "a red apple\na red apple on a table", "file": ""}},
        "6": {"class_type": "LeapAlignTrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "reward": ["4", 0], "prompts": ["5", 0],
            "method": "leapalign", "alpha": 0.5, "hinge_lambda": -1.0, "tau": 0.1, "lora_rank": 4,
            "lora_alpha": 4.0, "lora_targets": "attention+mlp+modulation", "learning_rate": 0.01, "weight_decay": 0.0,
            "grad_clip": 0.0, "ema_decay": 0.0, "steps": 2, "batch_size": 2, "grad_accumulation": 1, "seed": 0,
            "width": 32, "height": 32, "sampling_steps": 4, "scheduler": "simple", "guidance": 3.5,
            "checkpoint_every": 0, "run_name": run_name, "resume": False, "memory_preset": preset}},
        "7": {"class_type": "LeapAlignSaveLoRA", "inputs": {"lora": ["6", 1], "filename_prefix": f"tests/{run_name}",
                                                            "dtype": "fp32"}},
    }


def test_training_node_with_every_exact_option_trains_the_same(comfy, pack_import, monkeypatch):
    """Through the executor: block/decoder/reward checkpointing + text-encoder offload give the same
    losses and gradient norms as no option (reward bf16 is a precision change, tested above)."""
    import json

    import folder_paths

    from trainer_cli.comfy_runtime import execute_prompt

    memory = pack_import("nodes.memory_options")
    forced = memory.MemoryOptions(checkpoint_blocks=True, checkpoint_decoder=True, checkpoint_reward=True,
                                  offload_text_encoders=True)
    real_resolve = memory.resolve

    def resolve(preset, shape, device):
        if preset == "fit 12 GB":  # stands for "every option" here: a tiny model would need none
            return memory.plan(shape, forced), None
        return real_resolve(preset, shape, device)

    monkeypatch.setattr(memory, "resolve", resolve)
    history = {}
    for preset in ("off", "fit 12 GB"):
        run = f"memory_{preset.replace(' ', '_')}"
        result = execute_prompt(_node_graph(run, preset))
        assert result.success, result.error
        path = Path(folder_paths.get_output_directory()) / "leapalign" / run / "metrics.jsonl"
        history[preset] = [json.loads(line) for line in path.read_text().splitlines()]
    for plain, checked in zip(history["off"], history["fit 12 GB"], strict=True):
        assert checked["loss"] == pytest.approx(plain["loss"], rel=1e-5)
        assert checked["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
        assert plain["grad_norm"] > 0

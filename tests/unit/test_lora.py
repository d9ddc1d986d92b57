"""LoRA by output hooks: exact equivalence with a merged weight, no renaming, kohya export round trip."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from leapalign.lora import (
    DEFAULT_TARGETS,
    TARGET_PRESETS,
    LoRAAdapter,
    LoRAConfig,
    LoRAError,
    LoRAMetadata,
    kohya_name,
    save_kohya,
)


class _Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)


class _Double(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.img_attn = _Attn(d)
        self.txt_attn = _Attn(d)
        self.img_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.txt_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.img_mod = nn.Module()
        self.img_mod.lin = nn.Linear(d, 6 * d)


class _Single(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.linear1 = nn.Linear(d, 7 * d)
        self.linear2 = nn.Linear(5 * d, d)


class FluxLike(nn.Module):
    """Module paths laid out like BFL Flux (what the target patterns match)."""

    def __init__(self, d=8):
        super().__init__()
        self.double_blocks = nn.ModuleList([_Double(d)])
        self.single_blocks = nn.ModuleList([_Single(d), _Single(d)])
        self.final = nn.Linear(d, d)

    def forward(self, x):
        blk = self.double_blocks[0]
        h = blk.img_attn.proj(blk.img_attn.qkv(x)[..., : x.shape[-1]]) + blk.img_mlp(x)
        out = 0
        for s in self.single_blocks:
            y = s.linear1(h)
            out = out + s.linear2(y[..., : 5 * x.shape[-1]])
        return self.final(out)


def _randomize(lora):
    with torch.no_grad():
        for p in lora.parameters():
            p.normal_()


def test_targets_match_bfl_paths_and_keep_names():
    model = FluxLike()
    names_before = [n for n, _ in model.named_parameters()]
    lora = LoRAAdapter(model, LoRAConfig(rank=2, alpha=4))
    assert sorted(lora.paths.values()) == sorted([
        "double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj",
        "double_blocks.0.txt_attn.qkv", "double_blocks.0.txt_attn.proj",
        "double_blocks.0.img_mlp.0", "double_blocks.0.img_mlp.2",
        "double_blocks.0.txt_mlp.0", "double_blocks.0.txt_mlp.2",
        "single_blocks.0.linear1", "single_blocks.0.linear2",
        "single_blocks.1.linear1", "single_blocks.1.linear2",
    ])
    with lora.applied(model):
        assert [n for n, _ in model.named_parameters()] == names_before
    with_mod = LoRAAdapter(model, LoRAConfig(rank=2, targets=TARGET_PRESETS["attention+mlp+modulation"]))
    assert "double_blocks.0.img_mod.lin" in with_mod.paths.values()


def test_fresh_lora_changes_nothing_and_init_is_peft_like():
    model = FluxLike()
    lora = LoRAAdapter(model, LoRAConfig(rank=4, alpha=8, init_seed=3))
    x = torch.randn(3, 8)
    base = model(x)
    with lora.applied(model):
        torch.testing.assert_close(model(x), base, rtol=0, atol=0)
    down = lora.down["double_blocks_0_img_attn_qkv"].weight.detach()
    assert torch.count_nonzero(lora.up["double_blocks_0_img_attn_qkv"].weight) == 0
    bound = 1 / math.sqrt(8)  # kaiming_uniform(a=sqrt(5)) on fan_in 8
    assert float(down.abs().max()) <= bound and float(down.std()) > bound / 4
    again = LoRAAdapter(FluxLike(), LoRAConfig(rank=4, alpha=8, init_seed=3))
    torch.testing.assert_close(again.down["double_blocks_0_img_attn_qkv"].weight, down, rtol=0, atol=0)


def test_hook_equals_merged_weight_and_is_inactive_outside_context():
    torch.manual_seed(1)
    model = FluxLike()
    lora = LoRAAdapter(model, LoRAConfig(rank=3, alpha=6))
    _randomize(lora)
    x = torch.randn(5, 8)
    base = model(x)
    with lora.applied(model):
        hooked = model(x)
    torch.testing.assert_close(model(x), base, rtol=0, atol=0)  # hooks removed on exit
    merged = FluxLike()
    merged.load_state_dict(model.state_dict())
    with torch.no_grad():
        for key, path in lora.paths.items():
            layer = merged.get_submodule(path)
            layer.weight += lora.scale * lora.up[key].weight @ lora.down[key].weight
    torch.testing.assert_close(hooked, merged(x), rtol=1e-5, atol=1e-5)
    assert (hooked - base).abs().max() > 1e-3


def test_gradient_reaches_only_lora_params_and_matches_hand_derivation():
    layer_model = FluxLike(d=4)
    for p in layer_model.parameters():
        p.requires_grad_(False)
    lora = LoRAAdapter(layer_model, LoRAConfig(rank=1, alpha=2, targets=(r"^final$",)))
    with torch.no_grad():
        lora.down["final"].weight.copy_(torch.tensor([[1.0, 2.0, 0.0, -1.0]]))
        lora.up["final"].weight.copy_(torch.tensor([[0.5], [0.0], [1.0], [2.0]]))
    x = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    with lora.applied(layer_model):
        out = layer_model.final(x)
    out.sum().backward()
    # d/d up = scale * (down x) broadcast over outputs; scale = 2, down x = 2
    torch.testing.assert_close(lora.up["final"].weight.grad, torch.full((4, 1), 4.0))
    # d/d down = scale * sum(up) * x = 2 * 3.5 * 1
    torch.testing.assert_close(lora.down["final"].weight.grad, torch.full((1, 4), 7.0))


def test_rank_larger_than_layer_is_a_clear_error():
    with pytest.raises(LoRAError, match=r"rank 9 is larger than layer .* allows .* at most 8"):
        LoRAAdapter(FluxLike(d=8), LoRAConfig(rank=9))
    with pytest.raises(LoRAError, match="no linear layer"):
        LoRAAdapter(FluxLike(), LoRAConfig(rank=2, targets=(r"^nothing$",)))


def test_kohya_export_layout_and_atomic_round_trip(tmp_path):
    model = FluxLike()
    lora = LoRAAdapter(model, LoRAConfig(rank=2, alpha=1.5))
    _randomize(lora)
    sd = lora.kohya_state_dict()
    assert kohya_name("double_blocks.0.img_attn.qkv") == "lora_unet_double_blocks_0_img_attn_qkv"
    assert sd["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"].shape == (2, 8)
    assert sd["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"].shape == (24, 2)
    assert float(sd["lora_unet_single_blocks_1_linear2.alpha"]) == 1.5
    assert len(sd) == 3 * len(lora.paths)
    meta = LoRAMetadata(base_model="flux1-dev.safetensors", parameters={"alpha": 0.5}, steps=7,
                        reward_before=0.2, reward_after=0.3).to_safetensors(lora.config)
    path = save_kohya(sd, tmp_path / "out" / "x.safetensors", meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.safetensors"]
    with safe_open(str(path), "pt") as f:
        stored = f.metadata()
    assert stored["leapalign_steps"] == "7" and stored["leapalign_reward_after"] == "0.3"
    assert stored["leapalign_base_model"] == "flux1-dev.safetensors"
    other = LoRAAdapter(FluxLike(), LoRAConfig(rank=2, alpha=1.5))
    other.load_kohya_state_dict(load_file(str(path)))
    for key in lora.paths:
        torch.testing.assert_close(other.up[key].weight, lora.up[key].weight, rtol=0, atol=0)
    with pytest.raises(LoRAError, match="does not match"):
        LoRAAdapter(FluxLike(), LoRAConfig(rank=2, alpha=1.5, targets=DEFAULT_TARGETS[:1])).load_kohya_state_dict(sd)


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    bad = {"x": torch.zeros(2), "y": torch.zeros(2)[:1].expand(3)}  # non-contiguous: safetensors refuses
    with pytest.raises(Exception):  # noqa: B017
        save_kohya(bad, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []

    def interrupted(src, dst):  # the write finished but the rename never happened (e.g. killed, disk error)
        raise OSError("simulated failure before the rename")

    monkeypatch.setattr("leapalign.atomic.os.replace", interrupted)
    with pytest.raises(OSError, match="simulated"):
        save_kohya({"x": torch.zeros(2)}, tmp_path / "x.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_saved_file_bytes_do_not_depend_on_metadata_order(tmp_path):
    """safetensors stores metadata in a hash map; our writer sorts it, so equal LoRAs are equal files,
    and the stock reader still reads every tensor and metadata entry."""
    sd = {"lora_unet_b.lora_up.weight": torch.randn(4, 2), "lora_unet_a.lora_down.weight": torch.randn(2, 3),
          "lora_unet_a.alpha": torch.tensor(2.0)}
    meta = {f"key_{i}": str(i) for i in range(12)}
    first = save_kohya(sd, tmp_path / "one.safetensors", meta).read_bytes()
    second = save_kohya(dict(reversed(sd.items())), tmp_path / "two.safetensors",
                        dict(reversed(meta.items()))).read_bytes()
    assert first == second
    assert len(first[8:8 + int.from_bytes(first[:8], "little")]) % 8 == 0
    with safe_open(str(tmp_path / "two.safetensors"), "pt") as handle:
        assert handle.metadata() == meta
        for key, value in sd.items():
            assert torch.equal(handle.get_tensor(key), value)


def test_hook_lora_matches_peft_lora_layer():
    """peft is the reference for what a LoRA computes: the same A/B weights in peft's own Linear layer
    give the same output, with peft's scaling lora_alpha / r equal to ours (kohya's alpha / rank)."""
    from peft import LoraConfig as PeftLoraConfig
    from peft.tuners.lora.layer import Linear as PeftLinear

    torch.manual_seed(2)
    model = FluxLike()
    lora = LoRAAdapter(model, LoRAConfig(rank=3, alpha=6, targets=(r"^double_blocks\.0\.img_attn\.qkv$",)))
    _randomize(lora)
    (key,) = lora.paths
    layer = model.get_submodule(lora.paths[key])
    reference = nn.Linear(layer.in_features, layer.out_features)
    reference.load_state_dict(layer.state_dict())
    peft_layer = PeftLinear(reference, "default", config=PeftLoraConfig(r=3, lora_alpha=6), r=3, lora_alpha=6)
    with torch.no_grad():
        peft_layer.lora_A["default"].weight.copy_(lora.down[key].weight)
        peft_layer.lora_B["default"].weight.copy_(lora.up[key].weight)
    assert peft_layer.scaling["default"] == pytest.approx(lora.scale)
    x = torch.randn(4, layer.in_features)
    with lora.applied(model):
        ours = layer(x)
    torch.testing.assert_close(ours, peft_layer(x), rtol=1e-6, atol=1e-6)
    assert (ours - reference(x)).abs().max() > 1e-3

"""Each reward's torch preprocessing against its reference package's own transform, and its gradients.

Images: smooth gradients, 1/f "photo" noise, hard edges and text-like strokes, at 512x512, 720x720,
720x477, 832x1216, 1216x832 and 1344x768 (width x height). The references come from the installed
packages (tests/unit/reward_references.py says how).
"""

import ast

import pytest
import torch
from reward_references import (
    IMAGES,
    SIZES,
    as_tensor,
    function_source,
    hpsv2_preprocess_val,
    image_reward_transform,
    openai_clip_transform,
    package_dir,
    reference_image,
    transformers_pil_processor,
)

from leapalign.rewards.preprocess import (
    OPENAI_CLIP_STD,
    center_crop,
    clip_preprocess,
    crop_start,
    longest_side_preprocess,
    resized_longer_side,
    resized_shorter_side,
)

SIZE = 224
STD = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
# hpsv2 resizes the float tensor with the same torch kernel: equal up to float rounding
# (measured 0; an 8-bit step is 1/255/0.27 = 0.0146 in normalized units).
HPS_ATOL = 1e-5
# PIL computes in fixed point with 8-bit results after each pass; ours in float, rounded to 8 bits after
# each pass: measured at most one 8-bit step at isolated pixels, 0.006 steps on average, over all
# images and sizes. A wrong kernel, crop offset or missing clamp moves them by many steps.
PIL_MAX_STEPS, PIL_MEAN_STEPS = 1.001, 0.02


def eight_bit_steps(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-pixel difference of two normalized images in 8-bit steps of the [0, 1] image."""
    assert ours.shape == reference.shape == (1, 3, SIZE, SIZE)
    return (ours - reference).abs() * STD * 255


@pytest.mark.parametrize("width,height", SIZES)
def test_hpsv21_matches_hpsv2_transform(width, height):
    transform = hpsv2_preprocess_val(SIZE)
    for kind in IMAGES:
        image = reference_image(kind, width, height)
        reference = transform(image)[None]
        ours = longest_side_preprocess(as_tensor(image), SIZE)
        torch.testing.assert_close(ours, reference, rtol=0, atol=HPS_ATOL, msg=lambda m, k=kind: f"{k}: {m}")


PIL_REFERENCES = {
    # PickScore and CLIP score: transformers' processor (PIL backend), crop offset floored.
    "transformers": (lambda: (lambda image: transformers_pil_processor(SIZE, SIZE)(
        image, return_tensors="pt")["pixel_values"][0]), "floor"),
    # Aesthetic predictor and ImageReward: OpenAI clip's _transform, crop offset rounded.
    "openai_clip": (lambda: openai_clip_transform(SIZE), "round"),
}


@pytest.mark.parametrize("reference", sorted(PIL_REFERENCES))
@pytest.mark.parametrize("width,height", SIZES)
def test_shorter_side_crop_matches_pil_reference(reference, width, height):
    make_transform, crop_offset = PIL_REFERENCES[reference]
    transform = make_transform()
    failures = []
    for kind in IMAGES:
        image = reference_image(kind, width, height)
        steps = eight_bit_steps(clip_preprocess(as_tensor(image), SIZE, crop_offset=crop_offset), transform(image)[None])
        if steps.max() > PIL_MAX_STEPS or steps.mean() > PIL_MEAN_STEPS:
            failures.append(f"{kind}: max {steps.max():.2f} mean {steps.mean():.3f} 8-bit steps")
    assert not failures, f"{reference} at {width}x{height}: " + "; ".join(failures)


def test_image_reward_transform_is_openai_clips():
    """image-reward 1.5 copies clip's _transform; pinned here, so the openai_clip comparison covers it."""
    image_reward_file = package_dir("ImageReward") / "ImageReward.py"
    clip_file = package_dir("clip") / "clip.py"
    for name in ("_transform", "_convert_image_to_rgb"):
        assert function_source(image_reward_file, name) == function_source(clip_file, name)
    image = reference_image("edges", 832, 1216)
    torch.testing.assert_close(image_reward_transform(SIZE)(image), openai_clip_transform(SIZE)(image), rtol=0, atol=0)
    assert "self.preprocess = _transform(224)" in image_reward_file.read_text(encoding="utf-8")


def _call_keywords(tree: ast.AST, function: str) -> list[dict]:
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == function]
    return [{k.arg: ast.literal_eval(k.value) for k in call.keywords if isinstance(k.value, ast.Constant)} for call in calls]


def test_hpsv2_scores_with_the_longest_side_transform():
    """Pins hpsv2_preprocess_val to the package: img_score builds its model with light_augmentation=True,
    for which create_model_and_transforms makes preprocess_val with resize_longest_max=True."""
    root = package_dir("hpsv2")
    score = ast.parse((root / "img_score.py").read_text(encoding="utf-8"))
    assert [k.get("light_augmentation") for k in _call_keywords(score, "create_model_and_transforms")] == [True]
    factory = ast.parse((root / "src" / "open_clip" / "factory.py").read_text(encoding="utf-8"))
    branch = next(n for n in ast.walk(factory) if isinstance(n, ast.If) and getattr(n.test, "id", "") == "light_augmentation")
    light = ast.Module(body=branch.body, type_ignores=[])  # the if-branch only, not its else
    assigned = [t.id for n in light.body if isinstance(n, ast.Assign) for t in n.targets]
    assert "preprocess_val" in assigned
    assert [k.get("resize_longest_max") for k in _call_keywords(light, "image_transform")] == [True]


def test_output_sizes_and_crop_offsets_follow_the_references():
    assert resized_shorter_side(1216, 832, 224) == (327, 224)  # transformers and torchvision: int()
    assert resized_longer_side(477, 720, 224) == (148, 224)  # hpsv2: round(477 * 224 / 720) = 148.4
    # 327 - 224 = 103: transformers floors to 51, torchvision rounds 51.5 to 52 (half to even).
    assert crop_start(327, 224, "floor") == 51 and crop_start(327, 224, "round") == 52
    assert crop_start(325, 224, "round") == 50  # 50.5 -> 50
    images = torch.arange(5 * 8, dtype=torch.float32).view(1, 1, 5, 8)
    assert torch.equal(center_crop(images, 2, "floor"), images[..., 1:3, 3:5])
    assert torch.equal(center_crop(images, 2, "round"), images[..., 2:4, 3:5])
    with pytest.raises(ValueError, match="crop offset"):
        crop_start(10, 2, "ceil")


def test_hps_pads_with_zeros_before_normalization():
    images = torch.ones(1, 3, 100, 224)  # already 224 wide: no resize, 62 rows above and below
    out = longest_side_preprocess(images, 224)
    padded = torch.tensor([-0.48145466 / 0.26862954, -0.4578275 / 0.26130258, -0.40821073 / 0.27577711])
    torch.testing.assert_close(out[0, :, :62, 0], padded[:, None].expand(3, 62))
    torch.testing.assert_close(out[0, :, 162:, 0], padded[:, None].expand(3, 62))
    assert (out[0, :, 62:162] > padded.view(3, 1, 1)).all()


def test_gradient_reaches_pixels_and_normalization_is_exact():
    images = torch.rand(2, 3, 224, 224, requires_grad=True)
    for preprocess in (clip_preprocess, longest_side_preprocess):  # no resize at the target size
        (grad,) = torch.autograd.grad(preprocess(images, 224).sum(), images)
        torch.testing.assert_close(grad, (1 / STD).expand_as(grad))
    resized = (0.1 + 0.8 * torch.rand(1, 3, 300, 260)).requires_grad_(True)  # no clamp switches on
    # The centre crop keeps 224 of the 258 resized columns (~87%); the padded resize keeps every pixel.
    for preprocess, reached in ((clip_preprocess, 0.85), (longest_side_preprocess, 1.0)):
        (grad,) = torch.autograd.grad(preprocess(resized, 224).square().sum(), resized)
        assert torch.isfinite(grad).all() and (grad.abs().sum(dim=(0, 1)) > 0).float().mean() >= reached

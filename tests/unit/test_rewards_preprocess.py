"""Torch preprocessing vs the libraries' PIL preprocessing, and its differentiability."""

import numpy as np
import pytest
import torch
from PIL import Image

from leapalign.rewards.preprocess import center_crop, clip_preprocess, resized_shorter_side

# PIL resizes in 8 bits, torch in float: the difference stays within ~3.5/255 per pixel at worst
# (0.05 in normalized units, whose std is ~0.27) and ~0.5/255 on average.
MAX_TOL, MEAN_TOL = 0.05, 0.004


def sample_image(height: int, width: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 0.5 + 0.5 * np.sin(x / 17.0)
    green = 0.5 + 0.5 * np.cos(y / 23.0)
    blue = ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 3) ** 2).astype(np.float32) * 0.8 + 0.1
    return Image.fromarray((np.stack([red, green, blue], -1) * 255).round().astype(np.uint8))


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@pytest.mark.parametrize("size", [(181, 243), (720, 720), (300, 200)])
def test_matches_open_clip_pil_transform(size):
    from open_clip.transform import image_transform

    image = sample_image(*size)
    ours = clip_preprocess(as_tensor(image), 224)
    reference = image_transform(224, is_train=False)(image)[None]
    assert ours.shape == reference.shape == (1, 3, 224, 224)
    difference = (ours - reference).abs()
    assert difference.max() < MAX_TOL and difference.mean() < MEAN_TOL


@pytest.mark.parametrize("size", [(181, 243), (300, 200)])
def test_matches_transformers_pil_clip_processor(size):
    from transformers import CLIPImageProcessorPil

    image = sample_image(*size)
    processor = CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    reference = processor(image, return_tensors="pt")["pixel_values"]
    difference = (clip_preprocess(as_tensor(image), 224) - reference).abs()
    assert difference.max() < MAX_TOL and difference.mean() < MEAN_TOL


def test_output_size_and_crop_follow_torchvision_rounding():
    assert resized_shorter_side(181, 243, 224) == (224, int(224 * 243 / 181))
    assert resized_shorter_side(300, 200, 224) == (int(224 * 300 / 200), 224)
    images = torch.arange(5 * 8, dtype=torch.float32).view(1, 1, 5, 8)
    # torchvision: top = round((5 - 2) / 2) = 2 (banker's rounding of 1.5), left = round(3.0) = 3
    assert torch.equal(center_crop(images, 2), images[..., 2:4, 3:5])


def test_gradient_reaches_pixels_and_normalization_is_exact():
    images = torch.rand(2, 3, 224, 224, requires_grad=True)
    out = clip_preprocess(images, 224)  # no resize at the target size: pure normalization
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    (grad,) = torch.autograd.grad(out.sum(), images)
    assert torch.allclose(grad, (1 / std).expand_as(grad))
    resized = torch.rand(1, 3, 300, 260, requires_grad=True)
    (grad,) = torch.autograd.grad(clip_preprocess(resized, 224).square().sum(), resized)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0

"""The shapes world's pure-torch parts: prompts, codec, the rule-based judge on hand-made scenes, the reward."""

from __future__ import annotations

import math

import pytest
import torch

from leapalign.shapes import spec
from leapalign.shapes.codec import ShapesCodec
from leapalign.shapes.judge import judge, judge_prompt, parse_picture
from leapalign.shapes.prompts import CATEGORIES, all_prompts, category_of, parse_prompt, scene_for
from leapalign.shapes.reward import ShapesReward, count_distribution, satisfaction, train_cell_net
from leapalign.shapes.scenes import Obj, render

pytestmark = pytest.mark.usefixtures("one_thread")


def verdict(prompt, *objects):
    return judge_prompt(prompt, parse_picture(render(list(objects))))


def test_prompts_cover_the_six_geneval_categories():
    prompts = all_prompts()
    assert len(prompts) == len(set(prompts)) == 126
    counts = {cat: sum(category_of(p) == cat for p in prompts) for cat in CATEGORIES}
    assert counts == {"single_object": 3, "two_object": 6, "counting": 9, "colors": 12, "position": 24,
                      "color_attr": 72}
    req = parse_prompt("a photo of a red square and a blue circle")
    assert (req.category, req.shapes, req.colours) == ("color_attr", ("square", "circle"), ("red", "blue"))
    assert parse_prompt("a photo of three triangles").count == 3
    assert parse_prompt("a photo of a circle below a square").relation == "below"
    with pytest.raises(ValueError, match="not one of the shapes world's forms"):
        parse_prompt("a photo of a purple hexagon")


def test_codec_round_trip_is_exact_on_scenes():
    gen = torch.Generator().manual_seed(0)
    scenes = [scene_for(p, gen) for p in all_prompts()[:40]]
    pictures = torch.stack([render(scene) for scene in scenes])
    codec = ShapesCodec()
    latents = codec.encode(pictures * 2 - 1)
    assert latents.shape == (40, 16, 4, 4)
    assert torch.allclose((codec.decode(latents) + 1) / 2, pictures, atol=1e-5)
    model_space = (latents - 0.1159) * 0.3611
    assert set(model_space[:, :9].round().unique().tolist()) <= {-1.0, 1.0}
    # summary channels at gain 3: each colour channel's brightest amplitude, then occupancy (4 copies)
    gain = spec.SUMMARY_GAIN
    amps = (model_space[:, :9] + 1) / 2
    colour = amps.reshape(40, 3, 3, 4, 4).amax(1)
    assert torch.allclose(model_space[:, 9:12], (2 * colour - 1) * gain, atol=1e-4)
    occupied = colour.amax(1, keepdim=True).expand(-1, 4, -1, -1)
    assert torch.allclose(model_space[:, 12:], (2 * occupied - 1) * gain, atol=1e-4)
    assert (model_space[:, 12] > 0).flatten(1).sum(1).tolist() == [len(scene) for scene in scenes]
    with pytest.raises(ValueError, match="shapes codec"):
        codec.encode(torch.zeros(1, 3, 30, 30))


def test_parser_reads_shape_colour_and_position():
    found = parse_picture(render([Obj("triangle", "yellow", 0, 0), Obj("circle", "blue", 1, 3),
                                  Obj("square", "green", 3, 2)]))
    assert [(d.shape, d.colour) for d in found] == [("triangle", "yellow"), ("circle", "blue"), ("square", "green")]
    assert [(round(d.row), round(d.col)) for d in found] == [(4, 4), (12, 28), (28, 20)]
    assert [d.area for d in found] == [24, 24, 36]


@pytest.mark.parametrize("prompt, objects, expected", [
    # single object
    ("a photo of a circle", [Obj("circle", "red", 2, 2)], True),
    ("a photo of a circle", [Obj("square", "red", 2, 2)], False),
    ("a photo of a circle", [], False),
    # two objects
    ("a photo of a circle and a square", [Obj("circle", "red", 0, 0), Obj("square", "blue", 3, 3)], True),
    ("a photo of a circle and a square", [Obj("circle", "red", 0, 0), Obj("circle", "blue", 3, 3)], False),
    # counting: exactly n
    ("a photo of three triangles", [Obj("triangle", "red", 0, i) for i in range(3)], True),
    ("a photo of three triangles", [Obj("triangle", "red", 0, i) for i in range(4)], False),
    ("a photo of three triangles", [Obj("triangle", "red", 0, i) for i in range(2)] + [Obj("square", "red", 3, 3)],
     False),
    ("a photo of two squares", [Obj("square", "red", 0, 0), Obj("square", "green", 2, 2), Obj("circle", "red", 3, 3)],
     True),
    # colours: the shape is there, every one of it in the colour
    ("a photo of a blue circle", [Obj("circle", "blue", 1, 1)], True),
    ("a photo of a blue circle", [Obj("circle", "green", 1, 1)], False),
    ("a photo of a blue circle", [Obj("circle", "blue", 1, 1), Obj("circle", "red", 2, 2)], False),
    ("a photo of a blue circle", [Obj("square", "blue", 1, 1)], False),
    # position
    ("a photo of a square left of a circle", [Obj("square", "red", 0, 0), Obj("circle", "red", 3, 1)], True),
    ("a photo of a square left of a circle", [Obj("square", "red", 0, 2), Obj("circle", "red", 3, 1)], False),
    ("a photo of a square left of a circle", [Obj("square", "red", 0, 1), Obj("circle", "red", 3, 1)], False),
    ("a photo of a square above a circle", [Obj("square", "red", 1, 3), Obj("circle", "red", 2, 0)], True),
    ("a photo of a square below a circle", [Obj("square", "red", 1, 3), Obj("circle", "red", 2, 0)], False),
    ("a photo of a triangle right of a square", [Obj("triangle", "red", 0, 3), Obj("square", "red", 0, 0)], True),
    # colour attribution: binding matters
    ("a photo of a red square and a blue circle", [Obj("square", "red", 0, 0), Obj("circle", "blue", 1, 1)], True),
    ("a photo of a red square and a blue circle", [Obj("square", "blue", 0, 0), Obj("circle", "red", 1, 1)], False),
    ("a photo of a red square and a blue circle", [Obj("square", "red", 0, 0)], False),
])
def test_judge_on_hand_made_scenes(prompt, objects, expected):
    assert verdict(prompt, *objects) is expected


def test_judge_ignores_specks_and_rejects_blobs_and_other_colours():
    picture = render([Obj("square", "red", 0, 0)])
    picture[:, 20:22, 20:22] = 1.0                    # a 4-pixel white speck: not an object
    assert [(d.shape, d.colour) for d in parse_picture(picture)] == [("square", "red")]
    blob = render([Obj("square", "red", 0, 0), Obj("square", "red", 0, 1)])
    blob[0, 1:7, 7:9] = 1.0                           # bridge two squares: one merged blob, no shape
    assert [d.shape for d in parse_picture(blob)] == ["unknown"]
    magenta = render([Obj("circle", "red", 2, 2)])
    magenta[2] = magenta[0]                           # red + blue = magenta: not a colour of the world
    assert [(d.shape, d.colour) for d in parse_picture(magenta)] == [("circle", "other")]
    faint = render([Obj("circle", "red", 2, 2)]) * 0.45   # below the segmentation threshold
    assert parse_picture(faint) == []
    assert judge(torch.stack([render([Obj("circle", "red", 2, 2)]), faint]),
                 ["a photo of a circle"] * 2).tolist() == [True, False]


def test_count_distribution_is_poisson_binomial():
    p = torch.tensor([0.5, 0.5, 1.0, 0.0])
    assert torch.allclose(count_distribution(p), torch.tensor([0.0, 0.25, 0.5, 0.25, 0.0]))


def test_soft_rules_match_the_judge_on_certain_cells():
    def certain(objects):
        shape_p, colour_p = torch.zeros(16, 4), torch.full((16, 4), 0.25)
        shape_p[:, 0] = 1
        for o in objects:
            i = o.row * 4 + o.col
            shape_p[i] = torch.nn.functional.one_hot(torch.tensor(1 + spec.SHAPES.index(o.shape)), 4).float()
            colour_p[i] = torch.nn.functional.one_hot(torch.tensor(spec.COLOUR_NAMES.index(o.colour)), 4).float()
        return shape_p, colour_p

    gen = torch.Generator().manual_seed(3)
    prompts = all_prompts()
    for i in range(200):
        scene = scene_for(prompts[i % len(prompts)], gen)
        other = prompts[(i * 7 + 3) % len(prompts)]
        for prompt in (prompts[i % len(prompts)], other):
            expected = verdict(prompt, *scene)
            assert float(satisfaction(parse_prompt(prompt), *certain(scene))) == (1.0 if expected else 0.0), prompt


@pytest.fixture(scope="module")
def reward():
    torch.set_num_threads(1)
    return ShapesReward(train_cell_net(300, seed=1))


def test_reward_prefers_matching_scenes_and_is_differentiable(reward):
    gen = torch.Generator().manual_seed(0)
    prompts = all_prompts()
    pictures = torch.stack([render(scene_for(p, gen)) for p in prompts])
    matched = reward(pictures, prompts)
    shuffled = reward(pictures, prompts[1:] + prompts[:1])
    assert matched.mean() > math.log(0.7) and shuffled.mean() < matched.mean() - 2.0
    empty = torch.zeros(1, 3, 32, 32)
    assert reward(pictures[:1], ["a test prompt"]) > math.log(0.9) > reward(empty, ["a test prompt"])  # "some object"
    x = pictures[:4].clone().requires_grad_(True)
    reward(x, prompts[:4]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

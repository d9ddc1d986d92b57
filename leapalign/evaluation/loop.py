"""The sampling-and-scoring loop: each (variant, prompt) sampled with a fixed seed, scored by every metric."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .store import EvalStore

# (variant, prompt, count, seed) -> images [count, 3, H, W] in [0, 1]; the same call must give the same images.
SampleFn = Callable[[str, str, int, int], Tensor]
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Metric:
    """A named per-image number: a reward's score, or 0/1 for whether a classifier sees the prompt."""

    name: str
    score: Callable[[Tensor, list[str]], Tensor]


def metrics_for(scorers: Sequence[torch.nn.Module]) -> list[Metric]:
    """One metric per reward (its ``name``), plus ``<name> accuracy`` for scorers with ``correct``
    (the digits world's reward and judge: the fraction of images showing the prompted digit)."""
    metrics: list[Metric] = []
    taken: set[str] = set()

    def unique(name: str) -> str:
        candidate, k = name, 2
        while candidate in taken:
            candidate, k = f"{name}#{k}", k + 1
        taken.add(candidate)
        return candidate

    for scorer in scorers:
        name = unique(getattr(scorer, "name", type(scorer).__name__))
        metrics.append(Metric(name, scorer))
        if callable(getattr(scorer, "correct", None)):
            metrics.append(Metric(unique(f"{name} accuracy"), lambda x, p, s=scorer: s.correct(x, p).float()))
    return metrics


@dataclass
class EvalPlan:
    """What is evaluated; ``variants[0]`` is the base every other variant is compared with."""

    prompts: list[str]
    variants: list[str]
    images_per_prompt: int = 4
    seed: int = 0
    settings: dict = field(default_factory=dict)  # sampler settings, recorded so a resume cannot mix them

    def record(self) -> dict:
        return {"prompts": list(self.prompts), "variants": list(self.variants),
                "images_per_prompt": self.images_per_prompt, "seed": self.seed, "settings": dict(self.settings)}


@dataclass
class EvalCounts:
    sampled: int = 0  # (variant, prompt) batches sampled in this call
    images: int = 0  # image files written in this call
    scores: int = 0  # score lines written in this call


def run_evaluation(plan: EvalPlan, sample: SampleFn, metrics: Sequence[Metric], store: EvalStore,
                   progress: ProgressFn | None = None, prompt_indices: Sequence[int] | None = None) -> EvalCounts:
    """Sample and score everything the store does not hold yet; returns what this call added.

    ``prompt_indices`` restricts this call to some prompts (one process's share on several GPUs).

    Every prompt uses the same ``plan.seed`` (its images are one batch from that seed), so a column
    of the grid shows one noise under every prompt and every variant starts from the same noises,
    which is what makes the paired differences against the base informative.
    """
    counts = EvalCounts()
    n = plan.images_per_prompt
    indices = list(range(len(plan.prompts)) if prompt_indices is None else prompt_indices)
    total = len(plan.variants) * len(indices)
    done = 0
    for variant in plan.variants:
        for index in indices:
            prompt = plan.prompts[index]
            missing = {m.name: [s for s in range(n) if (variant, index, s, m.name) not in store.scores] for m in metrics}
            unsaved = [s for s in range(n) if not store.has_image(variant, index, s)]
            if any(missing.values()) or unsaved:
                images = _sample(sample, variant, prompt, n, plan.seed)
                counts.sampled += 1
                for s in unsaved:
                    store.write_image(variant, index, s, images[s])
                    counts.images += 1
                counts.scores += _score(store, metrics, missing, images, variant, index, prompt)
            done += 1
            if progress is not None:
                progress(done, total, f"{variant}: {prompt}")
    return counts


def _sample(sample: SampleFn, variant: str, prompt: str, n: int, seed: int) -> Tensor:
    images = sample(variant, prompt, n, seed)
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[:2] != (n, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"the sampler returned {shape} for {n} images; expected [{n}, 3, H, W] in [0, 1]")
    return images


def _score(store: EvalStore, metrics: Sequence[Metric], missing: dict[str, list[int]], images: Tensor,
           variant: str, index: int, prompt: str) -> int:
    written = 0
    with torch.no_grad():
        for metric in metrics:
            need = missing[metric.name]
            if not need:
                continue
            values = metric.score(images[need], [prompt] * len(need)).detach().float().cpu()
            for s, value in zip(need, values.tolist()):
                store.add_score((variant, index, s, metric.name), prompt, value)
                written += 1
    return written


def flow_sampler(velocities: Callable[[str, str], Callable[[Tensor, Tensor], Tensor]],
                 decode: Callable[[Tensor], Tensor], sigmas: Tensor, latent_shape: Sequence[int]) -> SampleFn:
    """A ``SampleFn`` from the core's pieces: ``velocities(variant, prompt)`` gives the conditioned velocity,
    integrated with the core's Euler rollout from noise keyed by (seed, sample index), then decoded."""
    from ..noise import per_sample_noise
    from ..rollout import capture_rollout

    def sample(variant: str, prompt: str, count: int, seed: int) -> Tensor:
        noise = per_sample_noise(tuple(latent_shape), seed, 0, range(count))
        with torch.no_grad():
            return decode(capture_rollout(velocities(variant, prompt), noise, sigmas, keep=[]).final)

    return sample

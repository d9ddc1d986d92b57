"""Prompts of the digits world ("a handwritten seven") and reading the digit back out of a prompt."""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PROMPT_TEMPLATE = "a handwritten {word}"

_WORD_TO_DIGIT = {word: digit for digit, word in enumerate(DIGIT_WORDS)}
_TOKEN = re.compile(r"[a-z]+|\d")


def digit_prompt(digit: int, template: str = PROMPT_TEMPLATE) -> str:
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0-9, got {digit}")
    return template.format(word=DIGIT_WORDS[int(digit)])


def all_digit_prompts(template: str = PROMPT_TEMPLATE) -> list[str]:
    """The ten prompts of the world, in digit order."""
    return [digit_prompt(d, template) for d in range(10)]


def digits_named(prompt: str) -> set[int]:
    """Every digit a prompt names, as a word ("seven") or a single digit character ("7")."""
    return {(_WORD_TO_DIGIT[t] if t in _WORD_TO_DIGIT else int(t))
            for t in _TOKEN.findall(str(prompt).lower()) if t in _WORD_TO_DIGIT or t.isdigit()}


def allowed_digits(prompt: str) -> set[int]:
    """The digits a picture may show to satisfy ``prompt``: those it names, or any digit if it names none."""
    return digits_named(prompt) or set(range(10))


def allowed_mask(prompts: Sequence[str]) -> torch.Tensor:
    """``[B, 10]`` bools: which digits satisfy each prompt."""
    mask = torch.zeros((len(prompts), 10), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        mask[row, sorted(allowed_digits(prompt))] = True
    return mask


def parse_digit(prompt: str) -> int:
    """The digit a prompt asks for: the one digit word (or single digit character) it contains."""
    found = digits_named(prompt)
    if len(found) != 1:
        what = "no digit" if not found else f"several digits {sorted(found)}"
        raise ValueError(f"prompt {prompt!r} names {what}; the digits world needs exactly one, "
                         f"e.g. {digit_prompt(7)!r}")
    return found.pop()


def parse_digits(prompts: Sequence[str]) -> list[int]:
    return [parse_digit(p) for p in prompts]

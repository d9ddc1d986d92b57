"""Prompt sources: parse prompt lists from text, txt, jsonl or csv, and shard them by rank.

A prompt source is any sequence of strings; the training loop draws batches from it in a seeded
order, and each data-parallel rank reads a disjoint slice of every global batch.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

PROMPT_FILE_SUFFIXES = (".txt", ".jsonl", ".csv")


class PromptListError(ValueError):
    """A prompt list is empty or a prompt file cannot be parsed."""


def parse_prompt_text(text: str) -> list[str]:
    """One prompt per non-empty line; lines starting with '#' are comments."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def load_prompt_file(path: str | Path) -> list[str]:
    """Read prompts from ``.txt`` (one per line), ``.jsonl`` (a ``prompt`` field) or ``.csv`` (a ``prompt`` column)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PROMPT_FILE_SUFFIXES:
        raise PromptListError(f"prompt file {path} has suffix {suffix!r}; use one of {', '.join(PROMPT_FILE_SUFFIXES)}")
    if not path.is_file():
        raise PromptListError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if suffix == ".txt":
        prompts = parse_prompt_text(text)
    elif suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptListError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise PromptListError(f"{path}:{number}: expected an object with a string 'prompt' field")
            prompts.append(record["prompt"].strip())
    else:
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "prompt" not in reader.fieldnames:
            raise PromptListError(f"{path}: expected a header row with a 'prompt' column, got {reader.fieldnames}")
        prompts = [row["prompt"].strip() for row in reader if row.get("prompt") and row["prompt"].strip()]
    return require_prompts(prompts, source=str(path))


def require_prompts(prompts: Sequence[str], source: str = "prompt list") -> list[str]:
    prompts = [p for p in prompts if p]
    if not prompts:
        raise PromptListError(f"{source} contains no prompts; give at least one non-empty line")
    return list(prompts)


def shard_batch(batch: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The contiguous slice of a global batch that ``rank`` trains on (the batch must divide evenly)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    if len(batch) % world_size:
        raise ValueError(f"global batch of {len(batch)} prompts does not split evenly over {world_size} ranks")
    per_rank = len(batch) // world_size
    return list(batch[rank * per_rank:(rank + 1) * per_rank])

"""A tiny random HPSv3 in the released layout, for tests and offline demos (scores are meaningless).

``write_tiny_hpsv3(folder)`` writes ``HPSv3.safetensors`` with the release's key names (transformers
4.45 layout: ``visual.*``, ``model.*``, ``lm_head.weight``, ``rm_head.{0,3,5}.*``) and embedding
rows = base vocabulary + ``<|Reward|>``, and a ``Qwen2-VL-7B-Instruct/`` subfolder with a small
Qwen2-VL ``config.json``, a byte-level BPE tokenizer holding Qwen2-VL's special tokens, the
processor config and the Instruct chat template, so that transformers' own processor runs on it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .hpsv3 import BASE_FOLDER_NAME, CHECKPOINT_NAME
from .tiny_checkpoints import bytes_to_unicode

QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>")
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
             "max_position_embeddings": 8192, "rope_theta": 10000.0}
TINY_VISION = {"depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
               "temporal_patch_size": 2, "spatial_merge_size": 2, "in_channels": 3}


def write_tiny_qwen_tokenizer(folder: Path) -> tuple[object, dict[str, int]]:
    """A byte-level BPE Qwen2 tokenizer (a few merges) plus Qwen2-VL's special tokens, saved in ``folder``."""
    from transformers import Qwen2Tokenizer

    chars = list(bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e"), ("Ġ", "the"), ("i", "n"), ("a", "n"), ("e", "r")]
    vocab = {token: i for i, token in enumerate(chars + ["".join(m) for m in merges])}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    tokenizer = Qwen2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tokenizer.add_tokens(list(QWEN_SPECIAL_TOKENS), special_tokens=True)
    tokenizer.save_pretrained(str(folder))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    return tokenizer, ids


def legacy_key(key: str) -> str:
    """transformers-5 ``Qwen2VLForConditionalGeneration`` key -> the 4.45 name the release uses."""
    key = re.sub(r"^model\.visual\.", "visual.", key)
    return re.sub(r"^model\.language_model\.", "model.", key)


def write_tiny_hpsv3(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny HPSv3 folder; returns it. The reward token's id is the last embedding row."""
    from safetensors.torch import save_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor

    folder = Path(folder)
    base = folder / BASE_FOLDER_NAME
    base.mkdir(parents=True, exist_ok=True)
    tokenizer, ids = write_tiny_qwen_tokenizer(base)
    rows = len(tokenizer) + 1  # HPSv3 resizes the embeddings to the tokenizer plus <|Reward|>
    config = Qwen2VLConfig(
        text_config={**TINY_TEXT, "vocab_size": rows, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"]},
        vision_config={**TINY_VISION, "hidden_size": TINY_TEXT["hidden_size"]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    config.save_pretrained(str(base))
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280).save_pretrained(str(base))
    (base / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}), encoding="utf-8")
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    head = torch.nn.Sequential(torch.nn.Linear(32, 1024), torch.nn.ReLU(), torch.nn.Dropout(0.05),
                               torch.nn.Linear(1024, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    for parameter in (*model.parameters(), *head.parameters()):
        torch.nn.init.normal_(parameter, std=0.2)  # spread scores so comparisons are informative
    state = {legacy_key(k): v.contiguous() for k, v in model.state_dict().items()}
    state.update({f"rm_head.{k}": v.contiguous() for k, v in head.state_dict().items()})
    state["lm_head.weight"] = state["lm_head.weight"].clone()  # untied, as in the 7B release
    save_file(state, str(folder / CHECKPOINT_NAME))
    return folder

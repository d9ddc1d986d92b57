"""Tiny random reward checkpoints in the real file formats and layouts, for tests and offline demos.

Each writer saves a small random model of the same architecture family with the same container and
key names as the released checkpoint, so the real loading code runs unchanged on it (scores are
meaningless). Real weights cannot be downloaded in CI; these files stand in for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import atomic_save
from .aesthetic import AESTHETIC_LAYERS, CLIP_FOLDER_NAME, aesthetic_mlp
from .image_reward import _VISION_RENAMES, CHECKPOINT_NAME, MED_CONFIG_NAME, reward_head

# open_clip schema, as in open_clip's model_configs/*.json; the vocabulary stays the real one so that
# open_clip's bundled tokenizer works unchanged.
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_IMAGE_SIZE = 32
TINY_WORDS = ("a", "photo", "of", "cat", "dog", "red", "apple", "on", "the", "table", "blue", "car")


def _atomic_torch_save(obj, path: Path) -> None:
    atomic_save(obj, path)


def write_tiny_hps(path: str | Path, seed: int = 0, image_size: int = TINY_IMAGE_SIZE, patch_size: int = 8) -> dict:
    """``HPS_v2.1_compressed.pt`` layout: ``{'state_dict': open_clip CLIP state dict}``. Returns the config."""
    import open_clip

    config = json.loads(json.dumps(TINY_OPEN_CLIP_CONFIG))
    config["vision_cfg"].update(image_size=image_size, patch_size=patch_size)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**json.loads(json.dumps(config)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save({"state_dict": model.state_dict()}, path)
    return config


def bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table byte-level BPE tokenizers (GPT-2, CLIP) use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def _tiny_clip_vocab() -> tuple[dict[str, int], list[str]]:
    chars = list(bytes_to_unicode().values())
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("r", "e"), ("re", "d</w>")]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, [" ".join(m) for m in merges]


def write_tiny_clip_folder(folder: str | Path, seed: int = 0, projection_dim: int = 16, vision_width: int = 32,
                           vision_heads: int = 2, image_size: int = TINY_IMAGE_SIZE, patch_size: int = 8,
                           vision_mlp_ratio: int = 2) -> Path:
    """A transformers CLIP folder (config.json, model.safetensors, tokenizer, preprocessor_config.json)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = _tiny_clip_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    CLIPTokenizer.from_pretrained(str(folder), local_files_only=True).save_pretrained(str(folder))
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": bos,
                     "eos_token_id": eos, "pad_token_id": eos},
        vision_config={"hidden_size": vision_width, "intermediate_size": vision_mlp_ratio * vision_width,
                       "num_hidden_layers": 1,
                       "num_attention_heads": vision_heads,
                       "image_size": image_size, "patch_size": patch_size},
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(str(folder))
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(str(folder))
    return folder


def write_tiny_aesthetic(folder: str | Path, seed: int = 0, image_size: int = TINY_IMAGE_SIZE, patch_size: int = 8) -> Path:
    """``sac+logos+ava1-l14-linearMSE.pth`` (MLP state dict) with a tiny ``clip-vit-large-patch14/`` beside it.

    The image tower has OpenAI CLIP's 64-wide attention heads and 4x MLP, so OpenAI's ``clip`` package
    can build the same tower from it (tests compare the two).
    """
    folder = Path(folder)
    write_tiny_clip_folder(folder / CLIP_FOLDER_NAME, seed=seed, projection_dim=16, vision_width=64, vision_heads=1,
                           image_size=image_size, patch_size=patch_size, vision_mlp_ratio=4)
    torch.manual_seed(seed + 1)
    mlp = aesthetic_mlp(16)
    state_dict = mlp.state_dict()
    assert {k.split(".")[0] for k in state_dict} == {str(i) for i in AESTHETIC_LAYERS}
    path = folder / "sac+logos+ava1-l14-linearMSE.pth"
    _atomic_torch_save({f"layers.{k}": v for k, v in state_dict.items()}, path)
    return path


def _blip_vision_key(transformers_key: str) -> str:
    """Inverse of image_reward's renaming: transformers BlipVisionModel name -> BLIP/timm name."""
    import re

    inverse = (
        (r"^embeddings\.class_embedding$", "cls_token"),
        (r"^embeddings\.position_embedding$", "pos_embed"),
        (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
        (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
        (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
        (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
        (r"^encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
        (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
        (r"^post_layernorm\.", "norm."),
    )
    assert len(inverse) == len(_VISION_RENAMES)
    for pattern, replacement in inverse:
        new, count = re.subn(pattern, replacement, transformers_key)
        if count:
            return new
    raise KeyError(transformers_key)


def write_tiny_image_reward(folder: str | Path, seed: int = 0, vision_width: int = 128,
                            image_size: int = TINY_IMAGE_SIZE) -> Path:
    """An ImageReward folder: ``ImageReward.pt`` (BLIP key names), ``med_config.json``, BERT ``vocab.txt``."""
    from transformers import BlipTextConfig, BlipVisionConfig, BlipVisionModel
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    med = {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
           "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 64,
           "layer_norm_eps": 1e-12, "max_position_embeddings": 40, "model_type": "bert", "num_attention_heads": 2,
           "num_hidden_layers": 1, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": len(vocab) + 2,
           "encoder_width": vision_width, "add_cross_attention": True}
    (folder / MED_CONFIG_NAME).write_text(json.dumps(med, indent=2), encoding="utf-8")
    torch.manual_seed(seed)
    vision = BlipVisionModel(BlipVisionConfig(hidden_size=vision_width, intermediate_size=2 * vision_width,
                                              num_hidden_layers=1, num_attention_heads=vision_width // 64,
                                              image_size=image_size, patch_size=16, layer_norm_eps=1e-6))
    text = BlipTextModel(BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=32, encoder_hidden_size=vision_width,
                                        intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                        max_position_embeddings=40, bos_token_id=len(vocab), sep_token_id=3),
                         add_pooling_layer=False)
    head = reward_head(32)
    for parameter in (*vision.parameters(), *text.parameters(), *head.parameters()):
        torch.nn.init.normal_(parameter, std=0.2)  # spread scores so comparisons are informative
    state_dict = {f"blip.visual_encoder.{_blip_vision_key(k)}": v for k, v in vision.state_dict().items()}
    state_dict.update({f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()})
    state_dict["blip.text_encoder.embeddings.position_ids"] = torch.arange(40).unsqueeze(0)
    state_dict["blip.vision_proj.weight"] = torch.zeros(8, vision_width)
    state_dict["blip.vision_proj.bias"] = torch.zeros(8)
    state_dict["blip.text_proj.weight"] = torch.zeros(8, 32)
    state_dict["blip.text_proj.bias"] = torch.zeros(8)
    state_dict.update({f"mlp.layers.{k}": v for k, v in head.state_dict().items()})
    _atomic_torch_save(state_dict, folder / CHECKPOINT_NAME)
    return folder

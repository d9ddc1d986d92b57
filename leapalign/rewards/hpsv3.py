"""HPSv3: a Qwen2-VL-7B-Instruct fine-tuned as a preference model, with an MLP reward head.

The released ``HPSv3.safetensors`` (HF repo MizzenAI/HPSv3) is the state dict of the whole model:
the VLM (``visual.*``, ``model.*``, ``lm_head.weight``, in the key layout of transformers 4.45, or
the ``model.visual.*`` / ``model.language_model.*`` layout of later versions) plus ``rm_head``,
``Linear(3584, 1024) -> ReLU -> Dropout -> Linear(1024, 16) -> ReLU -> Linear(16, 2)``. The
architecture comes from the base model's ``config.json``; the tokenizer is the base tokenizer with
one added special token, ``<|Reward|>``, whose final hidden state the head reads. The head outputs
``(mu, sigma)`` of a Gaussian preference score; the score is ``mu`` (as HPSv3's inference does).

The prompt is the released template (``INSTRUCTION`` with the user's prompt, then the reward
suffix) inside Qwen2-VL's chat format; the image is resized to exactly the 256 * 28 * 28 pixel
budget HPSv3 was trained with (see ``qwen_preprocess.py``, differentiable). The VLM runs without
the ``hpsv3`` package (which pins old transformers and deepspeed): ``Qwen2VLModel`` of the installed
transformers is built on the meta device, the file's tensors are assigned to it (no 16 GB random
initialization), and the language-model head is dropped (only hidden states are needed).

Memory (estimates from the architecture): the weights without ``lm_head`` are 7.7 B parameters,
about 15.5 GB in bf16. Back-propagating to the pixels through all 28 decoder layers stores roughly
4-5 GB of activations per image (about 800 tokens); with gradient checkpointing (on by default)
under 1 GB per image, so HPSv3 fits beside Flux.1-dev (about 24 GB in bf16) on one 80 GB GPU.
Loading holds the file's tensors in CPU memory once (about 16 GB) before they move to the GPU.
Everything is cast to the loading dtype, buffers included, as HPSv3 itself does (``model.to(bf16)``);
the head runs in float32.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from .base import Reward, load_error
from .files import describe_state_dict, load_state_dict_file, read_json, require_folder
from .qwen_preprocess import QwenImageSettings, qwen_pixels

REWARD = "HPSv3"
CHECKPOINT_NAME = "HPSv3.safetensors"
BASE_FOLDER_NAME = "Qwen2-VL-7B-Instruct"
HPSV3_EXPECTED = (f"a folder with {CHECKPOINT_NAME} (HF repo MizzenAI/HPSv3) and, in it or in a {BASE_FOLDER_NAME}/ "
                  "subfolder, the config and processor files of HF repo Qwen/Qwen2-VL-7B-Instruct (config.json, "
                  "tokenizer.json or vocab.json + merges.txt, tokenizer_config.json, preprocessor_config.json; "
                  "its weights are not needed)")
REWARD_TOKEN = "<|Reward|>"
IMAGE_TOKEN = "<|image_pad|>"
PIXELS = 256 * 28 * 28  # HPSv3's min_pixels = max_pixels: every image becomes 256 merged tokens
HEAD_LAYERS = (0, 3, 5)  # Linear indices in rm_head (1 and 4 are ReLU, 2 is Dropout)

# The instruction HPSv3 was trained with (hpsv3/dataset/data_collator_qwen.py of the release), verbatim:
# the model reads its own training format, trailing spaces included.
INSTRUCTION = """
You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. \n
**Visual Quality:**  \nEvaluate the overall visual quality of the image. The following sub-dimensions should be considered:
- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. \n
**Text Alignment:**  \nAssess how well the image matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.
- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.
- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.
- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.
Textual prompt - {text_prompt}


"""
SUFFIX = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
# Qwen2-VL-Instruct's chat template for one user turn holding an image then text, with the generation prompt.
CHAT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|>{image}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n")

_LEGACY_KEYS = ((r"^visual\.", "visual."), (r"^model\.visual\.", "visual."),
                (r"^model\.language_model\.", "language_model."), (r"^model\.", "language_model."))


def backbone_key(key: str) -> str | None:
    """Checkpoint key -> ``Qwen2VLModel`` key (either release layout); ``None`` for keys not needed
    (the heads, and rotary frequencies, which are rebuilt from the config if a file carries them)."""
    if key.startswith(("lm_head.", "rm_head.")) or key.endswith(".inv_freq"):
        return None
    for pattern, replacement in _LEGACY_KEYS:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return key


def reward_head(state_dict: dict[str, Tensor]) -> nn.Sequential:
    """``rm_head`` with its widths read from the file (1024 and 16 in the release)."""
    first, second, last = (state_dict[f"rm_head.{i}.weight"] for i in HEAD_LAYERS)
    return nn.Sequential(nn.Linear(first.shape[1], first.shape[0]), nn.ReLU(), nn.Dropout(0.05),
                         nn.Linear(second.shape[1], second.shape[0]), nn.ReLU(),
                         nn.Linear(last.shape[1], last.shape[0], bias=f"rm_head.{HEAD_LAYERS[2]}.bias" in state_dict))


def prompt_text(prompt: str, image_tokens: int) -> str:
    """The full model input text for one prompt, with the image placeholder expanded as the processor does."""
    return CHAT.format(image=IMAGE_TOKEN * image_tokens, text=INSTRUCTION.format(text_prompt=prompt) + SUFFIX)


def mrope_positions(input_ids: Tensor, image_token_id: int, grid: tuple[int, int]) -> Tensor:
    """Qwen2-VL's 3D rotary positions ``[3, B, L]`` for rows holding one image of ``grid`` merged tokens.

    Text before the image counts 0, 1, ...; image token (i, j) sits at (s, s + i, s + j) for the
    image's start s; text after it resumes at s + max(grid). Right padding gets the next positions
    (it is masked and after the read-out token, so it never matters).
    """
    batch, length = input_ids.shape
    gh, gw = grid
    positions = torch.empty(3, batch, length, dtype=torch.long, device=input_ids.device)
    rows = torch.arange(gh, device=input_ids.device).repeat_interleave(gw)
    cols = torch.arange(gw, device=input_ids.device).repeat(gh)
    for b in range(batch):
        where = (input_ids[b] == image_token_id).nonzero().flatten()
        if where.numel() != gh * gw or int(where[-1] - where[0]) + 1 != gh * gw:
            raise RuntimeError(f"{REWARD}: row {b} does not hold one block of {gh * gw} image tokens")
        start, end = int(where[0]), int(where[-1]) + 1
        positions[:, b, :start] = torch.arange(start, device=input_ids.device)
        positions[0, b, start:end] = start
        positions[1, b, start:end] = start + rows
        positions[2, b, start:end] = start + cols
        positions[:, b, end:] = start + max(gh, gw) + torch.arange(length - end, device=input_ids.device)
    return positions


class HPSv3Reward(Reward):
    name = "hpsv3"
    scale = "mu of HPSv3's Gaussian preference score, about 0-15 (Flux.1-dev 10.8-13.5 depending on the prompts)"
    default_lambda = 13.5  # the LeapAlign paper's threshold on this scale

    def __init__(self, backbone: nn.Module, head: nn.Sequential, tokenizer, settings: QwenImageSettings,
                 gradient_checkpointing: bool = True):
        super().__init__()
        self.backbone = backbone
        self.rm_head = head.float()
        self.tokenizer = tokenizer
        self.settings = settings
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
        self.reward_token_id = int(tokenizer.convert_tokens_to_ids(REWARD_TOKEN))
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.gradient_checkpointing = bool(gradient_checkpointing)
        if self.gradient_checkpointing:
            if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.20 name
                backbone.activation_checkpointing_enable({"use_reentrant": False})
            else:
                backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            for module in backbone.modules():  # checkpointing must not turn any dropout on
                if hasattr(module, "attention_dropout"):
                    module.attention_dropout = 0.0
        self.freeze()

    def train(self, mode: bool = True) -> HPSv3Reward:
        super().train(False)
        if self.gradient_checkpointing:
            # transformers checkpoints a layer only in training mode; its dropouts are all 0 here, so
            # the layers compute exactly as in eval mode while recomputing activations in backward.
            for module in self.backbone.modules():
                if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
                    module.training = True
        return self

    def _apply(self, fn, recurse=True):
        # ``reward.to(device, dtype)`` moves everything, but the head stays float32 as in HPSv3.
        super()._apply(fn, recurse)
        self.rm_head.float()
        return self

    def pixels(self, images: Tensor) -> tuple[Tensor, Tensor]:
        pixel_values, grid = qwen_pixels(images, self.settings)
        return self.as_model_input(pixel_values), grid

    def tokens(self, prompts: list[str], image_tokens: int) -> tuple[Tensor, Tensor]:
        ids = [self.tokenizer(prompt_text(p, image_tokens), add_special_tokens=False)["input_ids"] for p in prompts]
        length = max(len(row) for row in ids)
        input_ids = torch.full((len(ids), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for b, row in enumerate(ids):
            input_ids[b, :len(row)] = torch.tensor(row)
            mask[b, :len(row)] = 1
        if not ((input_ids == self.reward_token_id).sum(dim=1) == 1).all():
            raise RuntimeError(f"{REWARD}: a prompt must not spell out {REWARD_TOKEN!r} itself")
        return input_ids.to(self.weight_device), mask.to(self.weight_device)

    def hidden_states(self, pixel_values: Tensor, grid: Tensor, input_ids: Tensor, mask: Tensor) -> Tensor:
        visual = self.backbone.visual(pixel_values, grid_thw=grid)
        image_embeds = getattr(visual, "pooler_output", visual)  # transformers 5 returns an output object
        language = self.backbone.language_model
        embeds = language.embed_tokens(input_ids)
        is_image = (input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(is_image, image_embeds.to(embeds.dtype))
        merge = self.settings.merge_size
        positions = mrope_positions(input_ids, self.image_token_id, (int(grid[0, 1]) // merge, int(grid[0, 2]) // merge))
        return language(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).last_hidden_state

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        pixel_values, grid = self.pixels(images)
        image_tokens = int(grid[0].prod()) // self.settings.merge_size ** 2
        input_ids, mask = self.tokens(prompts, image_tokens)
        states = self.hidden_states(pixel_values, grid, input_ids, mask)
        read_out = states[input_ids == self.reward_token_id]  # [B, hidden], one reward token per row
        return self.rm_head(read_out.float())[:, 0]


def find_base_folder(folder: Path) -> Path:
    for candidate in (folder / BASE_FOLDER_NAME, folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise load_error(REWARD, folder, f"no config.json of Qwen2-VL-7B-Instruct (in the folder or {BASE_FOLDER_NAME}/)",
                     HPSV3_EXPECTED)


def read_settings(base: Path, pixels: int) -> QwenImageSettings:
    path = base / "preprocessor_config.json"
    cfg = read_json(path, REWARD, HPSV3_EXPECTED) if path.exists() else {}
    return QwenImageSettings(min_pixels=pixels, max_pixels=pixels, patch_size=int(cfg.get("patch_size", 14)),
                             temporal_patch_size=int(cfg.get("temporal_patch_size", 2)),
                             merge_size=int(cfg.get("merge_size", 2)),
                             mean=tuple(cfg.get("image_mean", QwenImageSettings.mean)),
                             std=tuple(cfg.get("image_std", QwenImageSettings.std)))


def load_tokenizer(base: Path, vocab_rows: int):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    except Exception as exc:  # tokenizers / transformers raise their own types
        problem = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise load_error(REWARD, base, f"the Qwen2-VL tokenizer could not be loaded ({problem})", HPSV3_EXPECTED) from None
    tokenizer.add_tokens([REWARD_TOKEN], special_tokens=True)  # as HPSv3 adds it: the next free id
    for token in (IMAGE_TOKEN, REWARD_TOKEN):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id or token_id >= vocab_rows:
            raise load_error(REWARD, base, f"the tokenizer's {token} (id {token_id}) does not fit the checkpoint's "
                             f"{vocab_rows}-row embedding; is this the Qwen2-VL-7B-Instruct tokenizer?", HPSV3_EXPECTED)
    return tokenizer


def build_backbone(base: Path, state_dict: dict[str, Tensor], checkpoint: Path, dtype: torch.dtype):
    """``Qwen2VLModel`` from ``config.json`` with the file's tensors assigned (weights never initialized)."""
    from transformers import Qwen2VLConfig, Qwen2VLModel

    config = Qwen2VLConfig.from_pretrained(str(base), local_files_only=True)
    if config.model_type != "qwen2_vl":
        raise load_error(REWARD, base, f"config.json has model_type {config.model_type!r}, not 'qwen2_vl'", HPSV3_EXPECTED)
    weights = {new: v.to(dtype) for k, v in state_dict.items() if (new := backbone_key(k)) is not None}
    config.text_config.vocab_size = weights["language_model.embed_tokens.weight"].shape[0]
    with torch.device("meta"):
        model = Qwen2VLModel(config)
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise load_error(REWARD, checkpoint, f"the weights do not fit Qwen2-VL ({'; '.join(lines[1:4])})", HPSV3_EXPECTED) from None
    # Non-persistent buffers (rotary frequencies) are not in the file: take them from a layer-less twin.
    twin = Qwen2VLModel(_layerless(config))
    buffers = dict(twin.named_buffers())
    for name, buffer in list(model.named_buffers()):
        owner, _, leaf = name.rpartition(".")
        if buffer.is_meta:
            if name not in buffers:
                raise RuntimeError(f"{REWARD}: cannot rebuild buffer {name} (unsupported transformers version?)")
            model.get_submodule(owner).register_buffer(leaf, buffers[name], persistent=False)
    return model.to(dtype)


def _layerless(config):
    small = config.__class__.from_dict(config.to_dict())
    small.text_config.num_hidden_layers = 0
    small.text_config.vocab_size = 1
    small.text_config.pad_token_id = None
    small.vision_config.depth = 0
    return small


def load_hpsv3(path: str | Path, *, dtype: torch.dtype = torch.bfloat16, gradient_checkpointing: bool = True,
               pixels: int = PIXELS) -> HPSv3Reward:
    """``path``: the HPSv3 folder or its ``HPSv3.safetensors``; everything is read from local files only.

    ``dtype`` is the VLM's (HPSv3 runs in bf16; tests use float32); ``pixels`` is the image budget.
    """
    path = Path(path)
    folder = require_folder(path, REWARD, HPSV3_EXPECTED)
    checkpoint = path if path.is_file() else folder / CHECKPOINT_NAME
    state_dict = load_state_dict_file(checkpoint, REWARD, HPSV3_EXPECTED)
    needed = [f"rm_head.{i}.weight" for i in HEAD_LAYERS]
    if not all(k in state_dict for k in needed) or not any(k.endswith("embed_tokens.weight") for k in state_dict):
        raise load_error(REWARD, checkpoint, f"it looks like {describe_state_dict(state_dict)}; "
                         f"missing rm_head or embed_tokens keys", HPSV3_EXPECTED)
    base = find_base_folder(folder)
    backbone = build_backbone(base, state_dict, checkpoint, dtype)
    head = reward_head(state_dict)
    head.load_state_dict({k[len("rm_head."):]: v.float() for k, v in state_dict.items() if k.startswith("rm_head.")})
    tokenizer = load_tokenizer(base, backbone.language_model.embed_tokens.num_embeddings)
    return HPSv3Reward(backbone, head, tokenizer, read_settings(base, pixels), gradient_checkpointing)

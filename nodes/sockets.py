"""Every socket type the pack's nodes exchange, declared once (ComfyUI V3 ``io.Custom`` types).

A socket type name is what the editor matches when a link is drawn; declaring each here, and only
here, keeps two nodes from spelling the same type two ways. What travels on each:

* ``LEAP_REWARD``: a ``leapalign.rewards`` reward (a differentiable image scorer).
* ``LEAP_PROMPTS``: a list of prompt strings.
* ``LEAP_LORA``: a trained LoRA (``nodes.lora_nodes.TrainedLoRA``).
* ``LEAP_METRICS``: a training run's per-step history (``{"history", "run_dir", "method"}``).
* ``LEAP_ROLLOUT``: a captured rollout (``nodes.rollout_nodes.CapturedRollout``).
* ``LEAP_METHOD``: what one training sample computes (a ``leapalign.config.MethodConfig``).
* ``LEAP_OPTIMIZER``: AdamW settings (a ``leapalign.config.OptimConfig``).
* ``LEAP_LORA_SETTINGS``: the LoRA's shape (``nodes.settings.LoRASettings``).
"""

from __future__ import annotations

from comfy_api.latest import io

Reward = io.Custom("LEAP_REWARD")
Prompts = io.Custom("LEAP_PROMPTS")
LoRA = io.Custom("LEAP_LORA")
Metrics = io.Custom("LEAP_METRICS")
Rollout = io.Custom("LEAP_ROLLOUT")
Method = io.Custom("LEAP_METHOD")
Optimizer = io.Custom("LEAP_OPTIMIZER")
LoRASettings = io.Custom("LEAP_LORA_SETTINGS")

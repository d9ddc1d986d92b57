"""``leapalign-comfy eval``: is my LoRA better than the base, on which rewards, and by how much beyond noise?

The model, text encoder and VAE come from a workflow: the inputs of its training node (or of the
first node taking all three). The graph is reduced to the nodes those come from, and one
``LeapAlign Evaluate`` node is added, fed with the workflow's reward (the training node's), any
``--reward`` loaders, the world's judge when the model's source node has one (the digits world),
and the prompts (``--prompts FILE``, else the training node's). Defaults for resolution, steps,
scheduler and guidance are the training node's. Everything lands in ``--output``: ``eval/``
holds the images, ``scores.jsonl``, ``scores.csv``, ``summary.csv``, ``table.txt`` and ``grid.png``.
Running the same command again resumes: only missing images and scores are produced.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .console import Console
from .errors import CLIError
from .prepare import PreparedPrompt, boot, build_prompt, validate
from .training_nodes import TRAIN_NODES
from .workflow import read_workflow

EVAL_NODE_ID = "leapalign_eval"
EVAL_FOLDER = "eval"
FROM_TRAIN_NODE = {"width": "width", "height": "height", "sampling_steps": "sampling_steps",
                   "scheduler": "scheduler", "guidance": "guidance"}
REWARD_SLOTS = ("reward", "reward_2", "reward_3", "reward_4")


def add_eval_parser(sub, common, workflow_args) -> None:
    """The ``eval`` subcommand's arguments (registered by trainer_cli.main)."""
    parser = sub.add_parser(
        "eval", allow_abbrev=False, help="score the workflow's model and LoRAs on fixed prompts and seeds",
        description="Sample every prompt with fixed seeds for the workflow's model and for the model plus each "
                    "--lora, score every image with every reward, and write a table (mean, standard error, "
                    "paired difference against the base), CSVs and an image grid. Resumable.")
    workflow_args(parser)
    parser.add_argument("--prompts", metavar="FILE", help="prompt file, one per line (default: the training prompts)")
    parser.add_argument("--lora", metavar="NAME[:STRENGTH]", action="append", default=[],
                        help="a LoRA file (path, or name in models/loras) to compare with the base (repeatable)")
    parser.add_argument("--reward", metavar="KIND[=FILE]", action="append", default=[],
                        help="another reward, e.g. hpsv3=HPSv3/HPSv3.safetensors (FILE as listed in "
                             "models/reward_models; built-ins take none). Up to 4 rewards in all (repeatable)")
    parser.add_argument("--no-workflow-reward", action="store_true", help="do not score with the training reward")
    parser.add_argument("--images-per-prompt", type=int, default=4, metavar="N", help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=0, help="the noise seed of every prompt (default: %(default)s)")
    for name in ("width", "height", "steps"):
        parser.add_argument(f"--{name}", type=int, help="default: the training node's")
    parser.add_argument("--guidance", type=float, help="Flux guidance (default: the training node's, else 3.5)")
    parser.add_argument("--cfg", type=float, default=1.0, help="default: %(default)s")
    parser.add_argument("--sampler", default="euler", help="default: %(default)s")
    parser.add_argument("--scheduler", help="default: the training node's, else simple")
    parser.add_argument("-o", "--output", metavar="DIR",
                        help="output folder (default: runs/<workflow name>-eval); its eval/ subfolder holds the results")
    parser.add_argument("--gpus", metavar="N", type=int,
                        help="split the prompts over N local GPUs (N CPU processes without GPUs), through "
                             "torch.distributed.run as `train --gpus`; under torchrun leave it out")
    parser.add_argument("--dist-timeout", metavar="SECONDS", type=float, default=1800.0,
                        help="how long a process waits for the others (default: %(default)s)")
    common(parser)


def find_anchor(prompt: dict[str, dict]) -> str:
    """The node whose model/clip/vae inputs are evaluated: the training node, else any taking all three."""
    linked = [n for n, node in prompt.items() if all(isinstance(node["inputs"].get(k), list) for k in ("model", "clip", "vae"))]
    trainers = [n for n in linked if prompt[n]["class_type"] in TRAIN_NODES]
    if trainers or linked:
        return (trainers or linked)[0]
    raise CLIError("the workflow has no LeapAlign Train LoRA node (or other node taking model, clip and vae) "
                   "to take the model from")


def judge_link(prompt: dict[str, dict], model_link: list) -> list | None:
    """The ``judge`` output of the node the model comes from, when that node has one (the digits world)."""
    import nodes  # noqa: PLC0415  (ComfyUI's registry; booted by now)

    source = prompt[model_link[0]]["class_type"]
    names = list(getattr(nodes.NODE_CLASS_MAPPINGS.get(source), "RETURN_NAMES", ()) or ())
    return [model_link[0], names.index("judge")] if "judge" in names else None


def ancestors(prompt: dict[str, dict], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node_id = todo.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        todo.extend(v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list) and len(v) == 2)
    return seen


def parse_reward(text: str) -> tuple[str, str]:
    kind, sep, name = text.partition("=")
    if not kind.strip():
        raise CLIError(f"--reward {text!r}: give KIND or KIND=FILE, e.g. hpsv3=HPSv3/HPSv3.safetensors")
    return kind.strip(), name.strip() if sep else "(none: built-in reward)"


def lora_names(loras: list[str]) -> list[str]:
    """``NAME[:STRENGTH]`` lines for the node; a path to a file adds its folder to ComfyUI's LoRA folders."""
    import folder_paths  # noqa: PLC0415

    lines = []
    for item in loras:
        head, sep, tail = item.rpartition(":")
        name, strength = (head, f":{tail}") if sep and tail.replace(".", "", 1).isdigit() else (item, "")
        path = Path(name)
        if path.is_file():
            folder_paths.add_model_folder_path("loras", str(path.parent.resolve()))
            name = path.name
        elif name not in folder_paths.get_filename_list("loras"):
            raise CLIError(f"--lora {item!r}: no such file, and not a name in models/loras")
        lines.append(name + strength)
    return lines


def eval_prompt(prompt: dict[str, dict], args: argparse.Namespace) -> dict[str, dict]:
    """The workflow reduced to the model's sources plus reward loaders, prompts and one evaluation node."""
    anchor = prompt[find_anchor(prompt)]
    inputs = anchor["inputs"]
    extra: dict[str, dict] = {}
    rewards = [] if args.no_workflow_reward or not isinstance(inputs.get("reward"), list) else [inputs["reward"]]
    for i, text in enumerate(args.reward):
        kind, name = parse_reward(text)
        extra[f"leapalign_reward_{i}"] = {"class_type": "LeapAlignRewardLoader", "_meta": {"title": f"{kind} reward"},
                                          "inputs": {"kind": kind, "model_file": name, "precision": "auto"}}
        rewards.append([f"leapalign_reward_{i}", 0])
    if not rewards:
        raise CLIError("no reward to score with: the workflow's training node has none; add --reward KIND[=FILE]")
    if len(rewards) > len(REWARD_SLOTS):
        raise CLIError(f"at most {len(REWARD_SLOTS)} rewards per evaluation, got {len(rewards)}")
    if args.prompts:
        from leapalign.prompts import PromptListError, load_prompt_file  # noqa: PLC0415

        try:
            text = "\n".join(load_prompt_file(args.prompts))
        except (PromptListError, OSError) as exc:
            raise CLIError(f"--prompts {args.prompts}: {exc}") from None
        extra["leapalign_eval_prompts"] = {"class_type": "LeapAlignPromptList", "inputs": {"text": text, "file": ""}}
        prompts_link = ["leapalign_eval_prompts", 0]
    elif isinstance(inputs.get("prompts"), list):
        prompts_link = inputs["prompts"]
    else:
        raise CLIError("give --prompts FILE (the workflow's training node has no prompt list)")
    node = {"model": inputs["model"], "clip": inputs["clip"], "vae": inputs["vae"], "prompts": prompts_link,
            **dict(zip(REWARD_SLOTS, rewards)), **_settings(inputs, args)}
    judge = judge_link(prompt, inputs["model"])
    if judge is not None:
        node["judge"] = judge
    full = {**prompt, **extra, EVAL_NODE_ID: {"class_type": "LeapAlignEvaluate", "inputs": node,
                                              "_meta": {"title": "LeapAlign Evaluate"}}}
    return {n: full[n] for n in sorted(ancestors(full, EVAL_NODE_ID))}


def _settings(train_inputs: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    def pick(cli_value, key, default):
        if cli_value is not None:
            return cli_value
        value = train_inputs.get(FROM_TRAIN_NODE.get(key, ""))
        return value if value is not None and not isinstance(value, list) else default

    return {"loras": "\n".join(lora_names(args.lora)), "images_per_prompt": args.images_per_prompt, "seed": args.seed,
            "width": pick(args.width, "width", 1024), "height": pick(args.height, "height", 1024),
            "sampling_steps": pick(args.steps, "sampling_steps", 28), "sampler_name": args.sampler,
            "scheduler": pick(args.scheduler, "scheduler", "simple"), "cfg": args.cfg,
            "guidance": pick(args.guidance, "guidance", 3.5), "folder": EVAL_FOLDER}


def cmd_eval(args: argparse.Namespace, console: Console) -> int:
    from .launch import Rank, relaunch, torchrun_rank, worker_argv  # noqa: PLC0415

    data = read_workflow(args.workflow)
    if args.images_per_prompt < 1:
        raise CLIError(f"--images-per-prompt must be at least 1, got {args.images_per_prompt}")
    if args.gpus is not None and args.gpus < 1:
        raise CLIError(f"--gpus must be at least 1, got {args.gpus}")
    rank = torchrun_rank()
    if rank is None and args.gpus and args.gpus > 1:
        console.note(f"launching {args.gpus} processes through torch.distributed.run")
        return relaunch(args.gpus, worker_argv(args.argv), verbose=args.verbose, err=console.err)
    rank = rank or Rank()
    if not rank.is_main:
        console.prefix = f"[rank {rank.rank}] "
    output = Path(args.output or Path("runs") / f"{Path(args.workflow).stem}-eval").resolve()
    output.mkdir(parents=True, exist_ok=True)
    try:
        return _evaluate(args, console, data, rank, output)
    except BaseException:
        from .launch import shutdown_process_group  # noqa: PLC0415

        shutdown_process_group(clean=False)
        raise


def _evaluate(args: argparse.Namespace, console: Console, data: dict, rank, output: Path) -> int:
    from .comfy_runtime import execute_prompt  # noqa: PLC0415
    from .launch import init_process_group, pin_device, shutdown_process_group  # noqa: PLC0415

    device = pin_device(rank, force_cpu=args.cpu)
    log = output / "logs" / ("comfyui-eval.log" if rank.world_size == 1 else f"comfyui-eval-rank{rank.rank}.log")
    boot(args, console, log, output_dir=output, loras_dir=output)
    prepared = validate(PreparedPrompt(eval_prompt(build_prompt(data, args.set).prompt, args), [], "api"))
    if rank.distributed:
        init_process_group(device, args.dist_timeout)

    def on_event(event: str, payload: dict) -> None:
        if event == "progress_text" and payload.get("node") == EVAL_NODE_ID:
            console.print(console.prefix + payload.get("text", ""))

    result = execute_prompt(prepared.prompt, on_event=on_event, outputs=prepared.outputs)
    if not result.success:
        error = result.error or {}
        where = prepared.labels.get(str(error.get("node_id")), error.get("node_id", "?"))
        raise CLIError(f"evaluation failed in node {where}: {error.get('exception_message', 'interrupted')}".strip())
    shutdown_process_group(clean=True)
    if rank.is_main:
        table = (output / EVAL_FOLDER / "table.txt").read_text(encoding="utf-8")
        console.print("")
        console.print(table.rstrip())
        console.print(f"results: {output / EVAL_FOLDER} (summary.csv, scores.csv, grid.png, images/)")
    return 0


__all__ = ["add_eval_parser", "cmd_eval", "eval_prompt"]

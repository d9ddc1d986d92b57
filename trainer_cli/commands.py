"""The subcommands: ``train``, ``validate``, ``convert``, ``nodes`` and ``info``."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from leapalign.atomic import atomic_write_text

from .console import Console
from .errors import CLIError
from .prepare import boot, build_prompt, validate
from .workflow import node_label, read_workflow


def scratch_log(command: str) -> Path:
    """Where ComfyUI's log goes for commands that have no run directory (removed after success)."""
    folder = Path(tempfile.gettempdir()) / "leapalign-comfy"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{command}-{os.getpid()}.log"


@contextlib.contextmanager
def scratch_logging(console: Console, command: str):
    """A throw-away ComfyUI log: kept (and named in the error) only when something broke inside ComfyUI."""
    log = scratch_log(command)
    try:
        yield log
    except CLIError as exc:
        console.restore()
        if exc.exit_code == 2 or console.log_path is None:  # the user's input was wrong, not ComfyUI
            log.unlink(missing_ok=True)
        elif str(log) not in str(exc):
            exc.args = (f"{exc} (ComfyUI's log: {log})",)
        raise
    except BaseException:
        console.restore()
        if console.log_path is not None:
            console.note(f"(ComfyUI's log: {log})")
        raise
    else:
        console.restore()
        log.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# validate ---------------------------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace, console: Console) -> int:
    data = read_workflow(args.workflow)
    with scratch_logging(console, "validate") as log:
        boot(args, console, log)
        prepared = validate(build_prompt(data, args.set))
    outputs = ", ".join(node_label(n, prepared.prompt[n]) for n in prepared.outputs)
    console.print(f"{args.workflow}: valid ({prepared.source_format.upper()} format, {len(prepared.prompt)} nodes); "
                  f"output nodes: {outputs}")
    return 0


# convert ----------------------------------------------------------------------------------------

def cmd_convert(args: argparse.Namespace, console: Console) -> int:
    data = read_workflow(args.workflow)
    with scratch_logging(console, "convert") as log:
        boot(args, console, log)
        prepared = build_prompt(data, args.set)
        if not args.no_validate:
            validate(prepared)
    if args.output in (None, "-"):
        console.print(json.dumps(prepared.prompt, indent=2))
    else:
        write_json_atomic(Path(args.output), prepared.prompt)
        console.print(f"wrote {args.output} ({len(prepared.prompt)} nodes, API format)")
    return 0


# nodes ------------------------------------------------------------------------------------------

def cmd_nodes(args: argparse.Namespace, console: Console) -> int:
    with scratch_logging(console, "nodes") as log:
        booted = boot(args, console, log)
        import nodes as comfy_nodes  # noqa: PLC0415

        from .object_info import build_object_info  # noqa: PLC0415

        if args.all:
            names = sorted(comfy_nodes.NODE_CLASS_MAPPINGS)
        else:
            import sys  # noqa: PLC0415

            pack = sys.modules.get(booted.pack_module_name)
            names = sorted(pack.nodes.node_ids()) if pack is not None else []
        if args.names:
            missing = [n for n in args.names if n not in comfy_nodes.NODE_CLASS_MAPPINGS]
            if missing:
                raise CLIError(f"unknown node type(s): {', '.join(missing)}; `leapalign-comfy nodes` lists this pack's")
            names = list(args.names)
        info = build_object_info(names)
    if args.json:
        console.print(json.dumps(info, indent=2, default=str))
        return 0
    for name in names:
        console.print(describe_node(name, info.get(name, {})))
    return 0


def describe_node(name: str, info: dict[str, Any]) -> str:
    display = info.get("display_name") or name
    lines = [f"{name}" + (f"  \"{display}\"" if display != name else "") + f"  [{info.get('category', '')}]"]
    if info.get("description"):
        lines.append(f"    {info['description']}")
    sections = info.get("input") or {}
    for section in ("required", "optional"):
        for input_name, spec in (sections.get(section) or {}).items():
            lines.append("    " + describe_input(input_name, spec, optional=section == "optional"))
    outputs = info.get("output") or ()
    names = info.get("output_name") or outputs
    if outputs:
        lines.append("    -> " + ", ".join(f"{n} ({t})" for n, t in zip(names, outputs)))
    return "\n".join(lines)


def describe_input(name: str, spec: Any, optional: bool) -> str:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else "?"
    opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(kind, (list, tuple)):
        shown = list(kind)[:8]
        type_text = "one of " + ", ".join(map(str, shown)) + (" ..." if len(kind) > 8 else "")
    else:
        type_text = str(kind)
    extras = []
    if "default" in opts:
        default = opts["default"]
        text = json.dumps(default) if not isinstance(default, str) or len(default) < 40 else json.dumps(default[:37] + "...")
        extras.append(f"default {text}")
    if "min" in opts or "max" in opts:
        extras.append(f"range {opts.get('min', '')}..{opts.get('max', '')}")
    if optional:
        extras.append("optional")
    tooltip = opts.get("tooltip")
    out = f"{name}: {type_text}" + (f" ({', '.join(extras)})" if extras else "")
    return out + (f" - {tooltip}" if tooltip else "")


# info -------------------------------------------------------------------------------------------

def cmd_info(args: argparse.Namespace, console: Console) -> int:
    import torch  # noqa: PLC0415

    from .locate import ComfyUINotFound, locate_comfyui  # noqa: PLC0415

    try:
        install = locate_comfyui(args.comfyui)
        console.print(f"ComfyUI:     {install.path} ({install.source}, version {install.version})")
    except ComfyUINotFound as exc:
        console.print(f"ComfyUI:     not found ({exc})")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    console.print(f"torch:       {torch.__version__}; {gpus} CUDA device(s)"
                  + (f": {', '.join(torch.cuda.get_device_name(i) for i in range(gpus))}" if gpus else " (CPU only)"))
    console.print(f"distributed: {'nccl' if gpus else 'gloo'} backend; gloo available: {torch.distributed.is_gloo_available()}")
    from .progress import tensorboard_available  # noqa: PLC0415

    console.print(f"tensorboard: {'installed' if tensorboard_available() else 'not installed (metrics.jsonl only)'}")
    return 0


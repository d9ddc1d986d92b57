"""``leapalign-comfy``: run LeapAlign training graphs from a terminal, on one GPU or many.

Every problem a user can fix ends as one ``error: ...`` line on stderr and a non-zero exit code;
``--verbose`` adds tracebacks and shows ComfyUI's own log, which otherwise goes to a log file.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from .console import Console
from .errors import CLIError

DESCRIPTION = """\
Run a LeapAlign training graph built in ComfyUI without the ComfyUI app: the same workflow file,
ComfyUI's own validation and executor, on one process or many (torch.distributed).
Workflows may be saved in UI format (Workflow > Save) or API format (Workflow > Export (API)).
"""

EPILOG = """\
examples:
  leapalign-comfy train my_lora.json --output runs/cat
  leapalign-comfy train my_lora.json --set "Train LoRA.steps=400" --set 12.learning_rate=2e-5
  leapalign-comfy train my_lora.json --output runs/cat --resume
  leapalign-comfy train my_lora.json --gpus 8
  torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr HOST --master-port 29500 \\
      -m trainer_cli.main train my_lora.json --output /shared/runs/cat
  leapalign-comfy validate my_lora.json
  leapalign-comfy convert my_lora.json -o my_lora.api.json
  leapalign-comfy nodes
"""


def _common(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ComfyUI")
    group.add_argument("--comfyui", metavar="PATH",
                       help="ComfyUI folder to use (default: $COMFYUI_PATH, comfy-cli's default workspace, "
                            "then the copy unpacked by `make setup`)")
    group.add_argument("--custom-nodes", metavar="DIR", action="append", default=[],
                       help="also load this custom node folder (repeatable); the LeapAlign pack and ComfyUI's "
                            "built-in nodes are always loaded")
    group.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show ComfyUI's log and full tracebacks on errors")


def _workflow_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("workflow", metavar="WORKFLOW", help="workflow file (.json, UI or API format)")
    parser.add_argument("--set", metavar="NODE.INPUT=VALUE", action="append", default=[],
                        help="override a widget value; NODE is a node id, title, or a node type used once. "
                             "VALUE is a number, true/false or text, e.g. --set 12.steps=40 "
                             "--set \"Train LoRA.learning_rate=2e-5\" (repeatable)")
    parser.add_argument("--input-dir", metavar="DIR",
                        help="ComfyUI input folder (where file inputs such as prompt lists are looked up)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leapalign-comfy", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser(
        "train", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="run a training workflow headless and write its LoRA",
        description="Validate and execute WORKFLOW with ComfyUI's executor. Progress (steps/s, loss, reward, "
                    "ETA) goes to the terminal; the LoRA, checkpoints, metrics.jsonl (and TensorBoard events "
                    "when tensorboard is installed) go to the run folder. Under torchrun, every rank runs the "
                    "same graph and the training node trains data-parallel; only rank 0 writes files.")
    _workflow_args(train)
    train.add_argument("-o", "--output", metavar="DIR",
                       help="run folder, used as ComfyUI's output and LoRA folder: the saved LoRA, "
                            "leapalign/<run_name>/ (checkpoints, metrics.jsonl, tensorboard/), "
                            "workflow.api.json and logs/ (default: runs/<workflow name>)")
    train.add_argument("--resume", metavar="CKPT", nargs="?", const="latest",
                       help="continue from the latest checkpoint in the run folder, or from CKPT (a "
                            "checkpoint file or a folder holding checkpoints; it is copied into the run folder). "
                            "Use the same workflow and --output")
    train.add_argument("--gpus", metavar="N", type=int,
                       help="train on N local GPUs (N CPU processes without GPUs): relaunches this command "
                            "through torch.distributed.run. For several machines start it with torchrun instead")
    train.add_argument("--dist-timeout", metavar="SECONDS", type=float, default=1800.0,
                       help="how long a rank waits for the others in a collective before the job fails "
                            "(default: %(default)s)")
    train.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    _common(train)

    validate = sub.add_parser("validate", allow_abbrev=False,
                              help="check a workflow with ComfyUI's validation, without running it")
    _workflow_args(validate)
    _common(validate)

    convert = sub.add_parser("convert", allow_abbrev=False,
                             help="convert a UI-format workflow to API format (with --set applied)")
    _workflow_args(convert)
    convert.add_argument("-o", "--output", metavar="API_JSON", help="file to write (default: print to stdout)")
    convert.add_argument("--no-validate", action="store_true", help="convert even if ComfyUI would reject the result")
    _common(convert)

    nodes = sub.add_parser("nodes", allow_abbrev=False, help="list this pack's nodes with their inputs and outputs")
    nodes.add_argument("names", metavar="NODE_TYPE", nargs="*", help="show only these node types")
    nodes.add_argument("--all", action="store_true", help="list every loaded node, not only this pack's")
    nodes.add_argument("--json", action="store_true", help="print the nodes' /object_info entries as JSON")
    _common(nodes)

    from .eval_command import add_eval_parser  # noqa: PLC0415

    add_eval_parser(sub, _common, _workflow_args)

    info = sub.add_parser("info", allow_abbrev=False,
                          help="show which ComfyUI, torch, devices and optional extras would be used")
    info.add_argument("--comfyui", metavar="PATH", help="ComfyUI folder to check")
    info.add_argument("-v", "--verbose", action="store_true", help=argparse.SUPPRESS)
    return parser


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)
    console = Console(verbose=args.verbose)
    try:
        from . import commands, eval_command, train_command  # noqa: PLC0415

        handler = {
            "train": train_command.cmd_train,
            "validate": commands.cmd_validate,
            "convert": commands.cmd_convert,
            "nodes": commands.cmd_nodes,
            "info": commands.cmd_info,
            "eval": eval_command.cmd_eval,
        }[args.command]
        return handler(args, console)
    except CLIError as exc:
        if args.verbose:
            traceback.print_exc(file=console.err)
        console.error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return 130
    except Exception as exc:  # a bug, not bad input: say so, and how to see more
        if args.verbose:
            traceback.print_exc(file=console.err)
            console.error(f"unexpected {type(exc).__name__}: {exc}")
        else:
            console.error(f"unexpected {type(exc).__name__}: {exc} (run with --verbose for the traceback)")
        return 1
    finally:
        console.restore()


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
    main()

"""One graph on many processes: torchrun does the launching, this module the per-rank set-up.

``--gpus N`` re-runs the same command through ``torch.distributed.run`` (exactly what ``torchrun
--standalone --nproc-per-node N`` does). Under torchrun, whether started by ``--gpus`` or by the user
(multi-node), every rank pins its device *before* ComfyUI loads, joins the process group, boots
ComfyUI and executes the same graph; the training node sees the initialised process group and becomes
data-parallel. A failed rank writes its one-line reason into torchelastic's error file, so the
launcher can report the root cause once while the elastic agent stops the other ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass

from .errors import CLIError

LAUNCHED_BY_CLI = "LEAPALIGN_LAUNCHED_BY_CLI"  # set for workers started through --gpus


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_rank() -> Rank | None:
    """This process's place in a torchrun job, or None when not started by torchrun."""
    env = os.environ
    if not all(key in env for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return None
    try:
        return Rank(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]),
                    int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])))
    except ValueError:
        raise CLIError("RANK / WORLD_SIZE / LOCAL_RANK are set but are not integers; start workers with torchrun") from None


def launched_by_cli() -> bool:
    return os.environ.get(LAUNCHED_BY_CLI) == "1"


def pin_device(rank: Rank, force_cpu: bool = False) -> str:
    """Make ``cuda:LOCAL_RANK`` this process's current device (ComfyUI later picks the current one)."""
    import torch  # noqa: PLC0415

    if force_cpu or not torch.cuda.is_available():
        return "cpu"
    count = torch.cuda.device_count()
    if rank.local_rank >= count:
        raise CLIError(f"local rank {rank.local_rank} has no GPU: this machine has {count} visible GPU(s); "
                       "start at most that many processes per node")
    torch.cuda.set_device(rank.local_rank)
    return f"cuda:{rank.local_rank}"


def init_process_group(device: str, timeout_s: float) -> None:
    """Join the job's process group (NCCL on GPUs, gloo on CPU) with a bounded wait for slow peers."""
    import torch.distributed as tdist  # noqa: PLC0415

    backend = "gloo" if device == "cpu" else "nccl"
    try:
        tdist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as exc:  # rendezvous problems: wrong MASTER_ADDR/port, peers that never came
        raise CLIError(f"could not join the distributed job ({backend}): {str(exc).splitlines()[0]}", 1) from None


def barrier() -> None:
    import torch.distributed as tdist  # noqa: PLC0415

    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def shutdown_process_group(clean: bool) -> None:
    """Leave the process group. After success, a barrier first: without it gloo sometimes aborts at exit.

    After a failure no barrier: the other ranks may be stuck in a collective, and the elastic agent
    stops them once this process exits.
    """
    import torch.distributed as tdist  # noqa: PLC0415

    if not (tdist.is_available() and tdist.is_initialized()):
        return
    with contextlib.suppress(Exception):
        if clean:
            tdist.barrier()
        tdist.destroy_process_group()


def record_failure(message: str, exit_code: int, expected: bool = True) -> bool:
    """Write ``message`` into torchelastic's per-worker error file; True if there is one.

    ``expected`` marks a problem the CLI diagnosed itself (bad input, a node's error) as opposed to an
    unexpected exception such as a peer's lost connection, which is more often a consequence than a cause.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return False
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"message": message, "timestamp": int(time.time()), "time": time.time(),
                       "exit_code": exit_code, "expected": expected}, handle)
    except OSError:
        return False
    return True


def relaunch(nproc: int, worker_argv: list[str], *, verbose: bool, err) -> int:
    """Run ``python -m trainer_cli.main <worker_argv>`` as ``nproc`` torchrun workers; the exit code.

    The first failing rank's message (from its error file) is printed once; the elastic agent's own
    chatter stays out of the terminal unless ``verbose``.
    """
    from torch.distributed import run as torchrun  # noqa: PLC0415
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415

    if not verbose:
        logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
        logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # what torchrun does, without its banner
    args = torchrun.parse_args([
        "--standalone", "--nnodes=1", f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.2",
        "--module", "trainer_cli.main", *worker_argv,
    ])
    os.environ[LAUNCHED_BY_CLI] = "1"
    try:
        torchrun.run(args)
    except ChildFailedError as exc:
        rank, failure = root_failure(exc.failures)
        data = failure.error_file_data if isinstance(failure.error_file_data, dict) else {}
        message, code = data.get("message"), int(data.get("exit_code", 1) or 1)
        if failure.exitcode < 0:
            message, code = f"rank {rank} was killed by signal {failure.signal_name()}; the job was stopped", 1
        elif not isinstance(message, str) or not message:
            message = f"rank {rank} exited with code {failure.exitcode} (run with --verbose for its output)"
            code = failure.exitcode or 1
        else:
            message = f"rank {rank}: {message}"
        err.write(f"error: {message}\n")
        err.flush()
        return code
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    finally:
        os.environ.pop(LAUNCHED_BY_CLI, None)
    return 0


def root_failure(failures: dict) -> tuple[int, object]:
    """The failure that most likely caused the others.

    A rank killed from outside (SIGKILL from the OOM killer, a crash) comes first, because its peers then
    fail with connection errors of their own; then a problem a rank diagnosed itself; then the earliest.
    """
    killed = sorted((r, f) for r, f in failures.items()
                    if f.exitcode < 0 and f.signal_name() not in ("SIGTERM", "SIGINT", "SIGHUP"))
    if killed:
        return killed[0]
    recorded = [(r, f) for r, f in failures.items()
                if isinstance(f.error_file_data, dict) and isinstance(f.error_file_data.get("time"), (int, float))]
    if recorded:  # a diagnosed problem before an unexpected one, then the earliest
        return min(recorded, key=lambda item: (not item[1].error_file_data.get("expected", False),
                                               item[1].error_file_data["time"], item[0]))
    return min(failures.items(), key=lambda item: (item[1].timestamp, item[0]))


def worker_argv(argv: list[str]) -> list[str]:
    """The command line a worker gets: the user's, without ``--gpus``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--gpus":
            skip = True
            continue
        if arg.startswith("--gpus="):
            continue
        out.append(arg)
    return out


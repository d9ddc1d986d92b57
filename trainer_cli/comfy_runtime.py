"""Boot ComfyUI in-process (no HTTP server) and execute API-format prompts with its own executor.

Everything that depends on ComfyUI's start-up order lives here, because the order matters:
``comfy.cli_args.args`` must be set before ``comfy.model_management`` is imported, and ComfyUI's
top-level ``utils`` package must be imported before ``nodes`` (which puts ``comfy/`` first on
``sys.path``, after which ``utils`` would resolve to ``comfy/utils.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .locate import REPO_ROOT, ComfyUIInstall, locate_comfyui

PACK_DIR = REPO_ROOT
log = logging.getLogger("leapalign_comfy.runtime")


class ComfyBootError(RuntimeError):
    """ComfyUI could not be started or this pack could not be loaded into it."""


@dataclass
class BootedComfy:
    install: ComfyUIInstall
    pack_module_name: str
    pack_warnings: list[str]

    @property
    def version(self) -> str:
        return self.install.version


_BOOTED: BootedComfy | None = None


class _PackLogCapture(logging.Handler):
    """Collects warnings/errors ComfyUI logs while loading the pack, so tests can assert none."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


def boot_comfyui(
    comfyui: str | os.PathLike | None = None,
    *,
    cpu: bool | None = None,
    load_pack: bool = True,
    extra_custom_nodes: Iterable[str | os.PathLike] = (),
    models_dir: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    loras_dir: str | os.PathLike | None = None,
    input_dir: str | os.PathLike | None = None,
) -> BootedComfy:
    """Start ComfyUI once per process and load this pack the way ComfyUI loads custom nodes.

    ``cpu=None`` means: CPU when CUDA is not available. ``models_dir`` and ``output_dir`` redirect
    ComfyUI's model folders and output folder (tests point them at temporary directories);
    ``loras_dir`` becomes the first (save) folder for LoRAs, ``input_dir`` the input folder.
    """
    global _BOOTED
    if _BOOTED is not None:
        return _BOOTED
    install = locate_comfyui(comfyui)
    path = str(install.path)
    if path not in sys.path:
        sys.path.insert(0, path)

    import comfy.options  # noqa: PLC0415
    import torch  # noqa: PLC0415

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args  # noqa: PLC0415

    if cpu is None:
        cpu = not torch.cuda.is_available()
    args.cpu = bool(cpu)
    import folder_paths  # noqa: PLC0415
    import utils.extra_config  # noqa: F401, PLC0415  (ComfyUI's utils package, before nodes)

    if models_dir is not None:
        _redirect_models(folder_paths, Path(models_dir))
    if output_dir is not None:
        folder_paths.set_output_directory(str(output_dir))
    if loras_dir is not None:
        folder_paths.add_model_folder_path("loras", str(Path(loras_dir).resolve()), is_default=True)
    if input_dir is not None:
        folder_paths.set_input_directory(str(Path(input_dir).resolve()))

    import comfy.model_management  # noqa: F401, PLC0415

    import nodes  # noqa: PLC0415

    # Some built-in node files (0.14+: nodes_replacements.py) reach for PromptServer.instance while loading.
    with headless_server_instance(HeadlessServer()):
        _run_async(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    capture = _PackLogCapture()
    pack_module_name = ""
    if load_pack:
        root_logger = logging.getLogger()
        root_logger.addHandler(capture)
        try:
            before = set(nodes.NODE_CLASS_MAPPINGS)
            ok = _run_async(nodes.load_custom_node(str(PACK_DIR)))
            if not ok:
                raise ComfyBootError(f"ComfyUI could not load this node pack from {PACK_DIR}; run with --verbose for its log")
            pack_module_name = str(PACK_DIR).replace(".", "_x_")
            if not set(nodes.NODE_CLASS_MAPPINGS) - before:
                raise ComfyBootError(f"the node pack at {PACK_DIR} registered no nodes")
        finally:
            root_logger.removeHandler(capture)
    for extra in extra_custom_nodes:
        folder = Path(extra).resolve()
        if not folder.is_dir() and not (folder.suffix == ".py" and folder.is_file()):
            raise ComfyBootError(f"custom node folder {extra} does not exist")
        if not _run_async(nodes.load_custom_node(str(folder))):
            raise ComfyBootError(f"ComfyUI could not load the custom node folder {extra} (its import failed; "
                                 "run with --verbose to see why)")
    _BOOTED = BootedComfy(install, pack_module_name, capture.records)
    return _BOOTED


@functools.cache
def comfy_compat() -> ModuleType:
    """The pack's ``nodes/comfy_compat.py`` (every ComfyUI version difference), loaded by file path.

    The CLI cannot import it as ``nodes.comfy_compat``: ``nodes`` is ComfyUI's own module. The file only
    imports torch and ComfyUI, so a second, private copy of it is harmless.
    """
    path = PACK_DIR / "nodes" / "comfy_compat.py"
    spec = importlib.util.spec_from_file_location("leapalign_comfy_cli_compat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _redirect_models(folder_paths: Any, models_dir: Path) -> None:
    """Make every registered model folder kind look in ``models_dir/<kind>`` first."""
    for kind in list(folder_paths.folder_names_and_paths):
        target = models_dir / kind
        target.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(kind, str(target), is_default=True)


def _run_async(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    raise ComfyBootError("boot_comfyui must not be called from inside a running event loop")


class HeadlessServer:
    """The few attributes ComfyUI's executor and progress hook expect of ``PromptServer``.

    ``on_event`` receives every message the executor would have sent to the web UI.
    """

    def __init__(self, on_event: Callable[[str, dict], None] | None = None) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict = {}
        self.on_event = on_event
        self.events: list[tuple[str, Any]] = []
        for name, value in comfy_compat().headless_server_attributes().items():
            setattr(self, name, value)

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        if isinstance(data, dict):
            self.events.append((event, data))
        if self.on_event is not None and isinstance(data, dict):
            self.on_event(event, data)

    def queue_updated(self) -> None:  # the web UI's queue display; nothing to update headless
        pass

    def send_progress_text(self, text: Any, node_id: str | None = None, sid: str | None = None) -> None:
        self.send_sync("progress_text", {"text": str(text), "node": node_id})


@contextlib.contextmanager
def headless_server_instance(server: HeadlessServer):
    """Make ``server.PromptServer.instance`` our headless stand-in while a prompt runs.

    Nodes report to the UI through ``PromptServer.instance.send_sync``; without a web server that
    attribute does not exist and such nodes would crash, so they talk to the CLI instead.
    """
    import server as comfy_server  # noqa: PLC0415  (ComfyUI's server module; imported by nodes already)

    cls = comfy_server.PromptServer
    missing = object()
    previous = cls.__dict__.get("instance", missing)
    cls.instance = server
    try:
        yield
    finally:
        if previous is missing:
            del cls.instance
        else:
            cls.instance = previous


@dataclass
class PromptResult:
    success: bool
    outputs: dict[str, Any]
    error: dict | None = None
    interrupted: bool = False
    messages: list[tuple[str, dict]] = field(default_factory=list)


class PromptValidationError(ValueError):
    def __init__(self, error: dict, node_errors: dict) -> None:
        self.error = error
        self.node_errors = node_errors
        super().__init__(format_validation_error(error, node_errors))


def format_validation_error(error: dict, node_errors: dict) -> str:
    lines = [f"workflow is invalid: {error.get('message', 'unknown error')}" + (f" ({error['details']})" if error.get("details") else "")]
    for node_id, info in (node_errors or {}).items():
        for err in info.get("errors", []):
            detail = f": {err['details']}" if err.get("details") else ""
            lines.append(f"  node {node_id} ({info.get('class_type', '?')}): {err.get('message', '')}{detail}")
    return "\n".join(lines)


def validate_prompt(prompt: dict) -> list[str]:
    """Validate an API-format prompt with ComfyUI's own validator; returns the output node ids."""
    import execution  # noqa: PLC0415

    result = _run_async(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
    ok, error, outputs, node_errors = result[0], result[1], result[2], result[3]
    if not ok or node_errors:  # ComfyUI runs the valid outputs and drops the rest: refuse that
        raise PromptValidationError(error or {"message": "some outputs failed validation (ComfyUI would skip "
                                              "them and run the rest)"}, node_errors or {})
    return list(outputs)


@contextlib.contextmanager
def progress_hook(server: HeadlessServer):
    """Install ComfyUI's global progress hook: every ProgressBar update is also a cancel point."""
    import comfy.model_management  # noqa: PLC0415
    import comfy.utils  # noqa: PLC0415
    from comfy_execution.utils import get_executing_context  # noqa: PLC0415

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        context = get_executing_context()  # which node is running, as ComfyUI's own hook finds it
        if context is not None:
            prompt_id = prompt_id or context.prompt_id
            node_id = node_id or context.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        server.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id or server.last_prompt_id,
                                      "node": node_id or server.last_node_id})

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)


def execute_prompt(prompt: dict, *, on_event: Callable[[str, dict], None] | None = None, validate: bool = True,
                   outputs: list[str] | None = None) -> PromptResult:
    """Run an API-format prompt through ``execution.PromptExecutor`` exactly as the server would.

    ``outputs`` (the output node ids from an earlier ``validate_prompt``) skips the second validation.
    """
    import execution  # noqa: PLC0415

    if outputs is None:
        outputs = validate_prompt(prompt) if validate else [k for k, v in prompt.items() if _is_output(v)]
    server = HeadlessServer(on_event)
    executor = execution.PromptExecutor(server, cache_args=comfy_compat().executor_cache_args())
    prompt_id = str(uuid.uuid4())
    server.last_prompt_id = prompt_id
    with progress_hook(server), headless_server_instance(server):
        executor.execute(prompt, prompt_id, {}, outputs)
    error = None
    interrupted = False
    for event, data in executor.status_messages:
        if event == "execution_error":
            error = data
        elif event == "execution_interrupted":
            interrupted = True
    return PromptResult(
        success=bool(executor.success) and error is None and not interrupted,
        outputs=executor.history_result.get("outputs", {}),
        error=error,
        interrupted=interrupted,
        messages=list(executor.status_messages),
    )


def _is_output(node: dict) -> bool:
    import nodes  # noqa: PLC0415

    cls = nodes.NODE_CLASS_MAPPINGS.get(node.get("class_type"))
    return bool(getattr(cls, "OUTPUT_NODE", False))

"""The ``--set`` examples of README.md and of ``--help`` work on the shipped workflows.

``my_lora.json`` in the README stands for the shipped Flux training template; the demo's examples
run on ``workflows/demo_digits.json``. Every ``--set`` shown is applied by ``convert --no-validate``
(the Flux models are not here, so the graph is converted, not run).
"""

from __future__ import annotations

import json
import re
import shlex

import pytest
from cli_harness import explain, run_cli

from trainer_cli.locate import REPO_ROOT
from trainer_cli.main import EPILOG, build_parser
from trainer_cli.training_nodes import METHOD_BLOCKS

pytestmark = pytest.mark.comfy

FLUX_TEMPLATE = REPO_ROOT / "workflows" / "leapalign_flux_dev_hpsv21_train.json"
DEMO = REPO_ROOT / "workflows" / "demo_digits.json"


def shown_commands(text: str) -> list[list[str]]:
    """Command lines of the text's bash blocks (continuation lines joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "```" in text else [text]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line))
    return commands


def set_values(commands: list[list[str]], marker: str) -> list[str]:
    return [cmd[i + 1] for cmd in commands if marker in cmd for i, arg in enumerate(cmd) if arg == "--set"]


def _help_text() -> str:
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    return next(a.help for a in train._actions if a.dest == "set")


def test_readme_and_help_set_examples_apply_to_the_shipped_workflows(tmp_path):
    readme = shown_commands((REPO_ROOT / "README.md").read_text())
    flux = set_values(readme, "my_lora.json") + set_values(shown_commands(EPILOG), "my_lora.json")
    example = _help_text().split("e.g.", 1)[1].split("(repeatable)")[0]
    flux += set_values([shlex.split(example)], "--set")
    demo = set_values(readme, "trainer_cli.demo")
    assert len(flux) >= 6 and len(demo) >= 2, (flux, demo)  # the examples were found
    for workflow, sets in ((FLUX_TEMPLATE, flux), (DEMO, demo)):
        args = ["convert", workflow, "--no-validate", "-o", tmp_path / "out.json"]
        for item in sets:
            args += ["--set", item]
        proc = run_cli(*args)
        assert proc.returncode == 0, explain(proc)
        prompt = json.loads((tmp_path / "out.json").read_text())
        expected = {}  # (node id, input) -> value of the last --set of it
        for item in sets:
            target, _, value = item.partition("=")
            node, _, name = target.rpartition(".")
            ids = [i for i, n in prompt.items() if node in (i, n["_meta"].get("title"), n["class_type"])]
            assert len(ids) == 1, item
            node_id, inputs = ids[0], prompt[ids[0]]["inputs"]
            if name == "method" and isinstance(inputs.get(name), list):  # the method block was swapped
                assert prompt[inputs[name][0]]["class_type"] == METHOD_BLOCKS[value], item
                continue
            if name not in inputs:  # a setting of a block linked into the named node (optimizer, LoRA, method)
                node_id = next(link[0] for link in inputs.values() if isinstance(link, list)
                               and name in prompt[link[0]]["inputs"])
            expected[(node_id, name)] = json.loads(value) if value[:1].isdigit() else value
        for (node_id, name), value in expected.items():
            assert prompt[node_id]["inputs"][name] == value, (node_id, name)

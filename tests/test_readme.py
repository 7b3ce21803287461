"""The README's two commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_block(name: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", text, flags=re.S)
    assert match, f"README.md has no {name} markers"
    return [line for line in match.group(1).splitlines() if line.startswith("python3 ")]


def test_readme_has_one_test_command_that_installs_lints_and_tests():
    (command,) = readme_block("test-command")
    assert "pip install" in command and "-r requirements.txt" in command
    assert "ruff check" in command and "pytest" in command


def test_ci_runs_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    commands = [line for line in script.splitlines() if line.startswith("python3 ")]
    assert commands == readme_block("test-command"), ".ci/run and the README's test command differ"
    # the command is the script's last step, after the old virtualenv is removed
    assert script.rstrip().splitlines()[-1] == commands[0]
    assert script.index("rm -rf .venv") < script.index(commands[0])


def test_requirements_pin_torch_to_a_cpu_installable_range():
    requirements = (ROOT / "requirements.txt").read_text()
    torch_line = next(line for line in requirements.splitlines() if line.startswith("torch"))
    assert "<" in torch_line, "an unbounded torch pulls a multi-GB CUDA build"
    for package in ("gymnasium", "pygame", "numpy", "matplotlib", "pytest"):
        assert re.search(rf"^{package}\b", requirements, flags=re.M), package


def test_readme_main_command_installs_and_trains():
    (command,) = readme_block("main-command")
    assert "-r requirements.txt" in command and command.endswith("-m envs.train")

"""The README's two commands are the ones CI and users run; every command line and Python snippet
of the three READMEs (README.md, envs/README.md, llm/README.md) works as printed; the reading path
names functions that exist, with their lengths."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The README opens the door; the front ends' READMEs hold the details, the figures and their commands.
READMES = ("README.md", "envs/README.md", "llm/README.md")


def readme_block(name: str) -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {name}:start -->(.*?)<!-- {name}:end -->", text, flags=re.S)
    assert match, f"README.md has no {name} markers"
    return [line for line in match.group(1).splitlines() if line.startswith("python3 ")]


def test_readme_has_one_test_command_that_installs_lints_and_tests():
    (command,) = readme_block("test-command")
    assert "pip install" in command and "-e ." in command
    assert "ruff check" in command and "pytest" in command
    if " -n " in command + " ":  # pytest's workers come from pytest-xdist: it must be installed by the command
        assert re.search(r"^pytest-xdist\b", (ROOT / "requirements.txt").read_text(), flags=re.M)


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
    assert "-e ." in command and command.endswith("-m envs.train")


def code_blocks(language: str = "", readme: str | None = None) -> list[str]:
    """The fenced code blocks whose fence names `language` ("" for shell commands), of one README or
    (`readme=None`) of all three."""
    if readme is None:
        return [block for name in READMES for block in code_blocks(language, name)]
    blocks, current, fence = [], None, None
    for line in (ROOT / readme).read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("```"):  # fences may be indented (a block inside a list item)
            if current is None:
                current, fence = [], line.strip()[3:].strip()
            else:
                if fence == language:
                    blocks.append("\n".join(current) + "\n")
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def python_snippets() -> list[str]:
    return code_blocks("python")


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_snippets())))
def test_readme_python_snippets_run_as_printed(index, tmp_path):
    """Each ```python block of the READMEs, verbatim, in a fresh interpreter started outside the
    checkout (the installed package is what it imports)."""
    snippet = python_snippets()[index]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "the snippet prints its result"


def test_the_readmes_have_python_snippets_for_the_agent_and_the_pipeline():
    game = "\n".join(code_blocks("python", "envs/README.md"))
    assert "load_agent(" in game and "predict(" in game and "evaluate_policy(" in game
    assert "run_pipeline(PipelineConfig(" in "\n".join(code_blocks("python", "llm/README.md"))


class _Parsed(Exception):
    """Raised instead of running a command once its arguments have parsed."""


def readme_commands() -> list[tuple[str, list[str]]]:
    """(module, arguments) of every `python -m MODULE …` in the READMEs' command blocks (also after
    `&&`, after `VAR=value`, and the `-m MODULE …` a torchrun line starts on every rank). The test
    runner itself (`-m pytest`) is left out: parsing its arguments would run the suite."""
    commands = []
    for block in code_blocks(""):
        for line in block.replace("\\\n", " ").splitlines():  # a command continued with \ is one line
            line = re.split(r"\s#", line)[0].strip()
            for part in line.split("&&"):
                if not re.match(r"(?:[A-Z_]+=\S+\s+)*\S*(?:python|torchrun)\s", part.strip() + " "):
                    continue  # not a command (the layout block, prose)
                words = shlex.split(part.replace("<run>", "RUN"))
                while words and re.match(r"^[A-Z_]+=", words[0]):  # OMP_NUM_THREADS=1 …
                    words = words[1:]
                if not words or not re.search(r"(python|torchrun)$", words[0]):
                    continue
                if words[0].endswith("torchrun") or words[1:3] == ["-m", "torch.distributed.run"]:
                    options = words[1:] if words[0].endswith("torchrun") else words[3:]
                    # the per-rank command follows torchrun's own options: python -m MODULE …
                    words = ["python", *options[options.index("-m"):]] if "-m" in options else []
                if len(words) >= 3 and words[1] == "-m" and words[2] not in ("venv", "pytest"):
                    commands.append((words[2], words[3:]))
    return commands


def test_readme_lists_commands():
    modules = {module for module, _ in readme_commands()}
    assert {"envs.train", "envs.evaluate", "lessons", "llm.pipeline", "envs.bench_train", "envs.bench_gpu",
            "envs.diagnose", "llm.compare", "llm.bench_transfer"} <= modules
    assert "pytest" not in modules


def reading_path() -> list[tuple[str, int]]:
    """(`module.name`, stated lines) of each row of the README's reading path tables."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Reading path", 1)[1].split("\n## ", 1)[0]
    return [(name, int(lines)) for name, lines in re.findall(r"^\| \d+ \| `([\w.]+)` \| (\d+) \|", section, re.M)]


def test_the_reading_path_names_functions_that_exist_with_their_lengths():
    """Each function of the reading path exists under the name the README gives it, in the file that
    name says, and is as long as the README says (within 10%, at least 3 lines): when a function
    is renamed, moved or rewritten, this test names the row of the README to update."""
    import inspect

    rows = reading_path()
    assert len(rows) >= 12, "two paths of 6–8 functions"
    problems = []
    for name, stated in rows:
        module_name, *attrs = name.split(".")
        while attrs:  # the longest importable prefix is the module; the rest are attributes
            try:
                importlib.import_module(".".join([module_name, attrs[0]]))
            except ModuleNotFoundError:
                break
            module_name = f"{module_name}.{attrs.pop(0)}"
        obj = importlib.import_module(module_name)
        try:
            for attr in attrs:
                obj = getattr(obj, attr)
        except AttributeError:
            problems.append(f"{name}: no such function (renamed or moved?)")
            continue
        obj = inspect.unwrap(obj)  # a decorated function (torch.no_grad) is read where it is written
        path = Path(inspect.getsourcefile(obj)).resolve()
        assert path == (ROOT / (module_name.replace(".", "/") + ".py")).resolve(), (name, path)
        lines = len(inspect.getsourcelines(obj)[0])
        if abs(lines - stated) > max(3, stated // 10):
            problems.append(f"{name}: {lines} lines, the README says {stated}")
    assert not problems, "update the README's reading path: " + "; ".join(problems)


@pytest.mark.parametrize("module,args", readme_commands(), ids=[" ".join([m, *a]) for m, a in readme_commands()])
def test_every_readme_command_line_parses(module, args, monkeypatch):
    """Every command line the README shows is accepted by its parser: each flag exists and each
    value is allowed (the command is stopped right after parsing, so nothing runs)."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        original(self, argv, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    main = importlib.import_module(module if module != "lessons" else "lessons.__main__").main
    with pytest.raises(_Parsed):
        main(args)


def test_a_command_runs_from_outside_the_checkout(tmp_path):
    """`python -m envs.evaluate` from another folder: the installed package, not the working
    directory, provides `envs` (pip install -e .)."""
    result = subprocess.run([sys.executable, "-m", "envs.evaluate", "--checkpoint",
                             str(ROOT / "envs" / "agents" / "flappy_features.pt"), "--episodes", "2", "--cap", "5",
                             "--json"], cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "envs" not in os.listdir(tmp_path)
    assert '"mean"' in result.stdout

"""Practise (lessons/practise.py): the exercises grade honestly, and every planted bug is caught.

- Every formula a function in core/ implements has an exercise, or a lesson-level one.
- Honest grading: for every exercise, the project's own function read from an exercise file
  passes its grading tests, the untouched stub fails them, and a plausible wrong version fails
  them (all in one pytest run: the plugin runs each grading test once per variant).
- `check` prints one line per test and the first failure's inputs, expected and obtained values.
- Bug hunts (the list doubles as a mutation test of the suite): every bug's line occurs exactly
  once; planted in a copy of its file, each bug fails at least one of its listed tests while the
  unchanged copy passes them (one pytest run for all); `bughunt` plants, hints and reveals, and a
  copy of the whole project passes a bug's tests until the bug is planted there.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import torch

from lessons import practise
from lessons.catalog_scan import implemented_by, marked_test_ids

ROOT = Path(__file__).resolve().parent.parent


def test_every_core_formula_has_an_exercise_or_a_lesson_level_one():
    """Each formula implemented in core/ has an exercise or a lesson-level exercise, graded by its own marked tests."""
    implementations = implemented_by()
    in_core = {fid for fid, names in implementations.items() if any(n.startswith("core.") for n in names)}
    covered = set(practise.EXERCISES) | set(practise.LESSON_LEVEL)
    assert in_core - covered == set(), f"formulas in core/ without an exercise: {sorted(in_core - covered)}"
    anywhere = set(implementations)  # an exercise may also come from a front end (llm/)
    assert covered - anywhere == set(), f"exercises for formulas no function implements: {sorted(covered - anywhere)}"
    marked = marked_test_ids()
    for fid, exercise in practise.EXERCISES.items():
        owner = exercise.target.rsplit(".", 1)[0]  # a method's class carries the @implements
        assert {exercise.target, owner} & set(implementations[fid]), f"{exercise.target} is not @implements({fid!r})"
        assert set(exercise.grading) <= set(marked[fid]), f"{fid}: grading tests not marked {fid}"


def test_an_exercise_file_is_never_overwritten(tmp_path):
    """The stub is written once; a second `exercise` keeps the learner's work."""
    path = tmp_path / "ad4_gae.py"
    assert practise.write_exercise("AD-4", path) == (path, True)
    text = path.read_text(encoding="utf-8")
    assert "def gae(" in text and "raise NotImplementedError" in text and "GAE(λ)" in text
    path.write_text("# my work\n", encoding="utf-8")
    assert practise.write_exercise("AD-4", path) == (path, False)
    assert path.read_text(encoding="utf-8") == "# my work\n"


def test_grading_is_honest_reference_passes_stub_and_a_wrong_version_fail(tmp_path):
    """Every exercise: the project's code passes its grading tests, the stub and a plausible mistake fail."""
    variants, nodes = {}, []
    for fid, exercise in practise.EXERCISES.items():
        for variant in ("reference", "stub", "wrong"):
            file = tmp_path / f"{fid}_{variant}.py"
            file.write_text(practise.exercise_source(fid, variant), encoding="utf-8")
            variants[f"{fid}:{variant}"] = {"target": exercise.target, "file": str(file), "tests": exercise.grading}
        nodes += exercise.grading
    code, results, output = practise.run_graded({"variants": variants}, list(dict.fromkeys(nodes)))
    assert results, output[-3000:]
    outcomes: dict[str, list[str]] = {label: [] for label in variants}
    for result in results:
        if result["variant"]:
            outcomes[result["variant"]].append(result["outcome"])
    problems = []
    for fid in practise.EXERCISES:
        ref, stub, wrong = (outcomes[f"{fid}:{v}"] for v in ("reference", "stub", "wrong"))
        if not ref or set(ref) != {"passed"}:
            problems.append(f"{fid}: the project's own code gets {ref}")
        if "failed" not in stub:
            problems.append(f"{fid}: the stub is not failed ({stub})")
        if "failed" not in wrong:
            problems.append(f"{fid}: the wrong version {practise.EXERCISES[fid].wrong} is not failed ({wrong})")
    assert not problems, "\n".join(problems)


def test_check_prints_one_line_per_test_and_the_first_failure_then_passes_the_reference(tmp_path):
    """`check AD-2` on the stub: ✗ lines, inputs/expected/obtained, exit 1; on the project's code: ✓, exit 0."""
    command = [sys.executable, "-m", "lessons", "check", "AD-2"]
    stub = tmp_path / "stub.py"
    stub.write_text(practise.exercise_source("AD-2", "stub"), encoding="utf-8")
    done = subprocess.run([*command, str(stub)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout + done.stderr
    for needed in ("✗", "inputs:", "expected:", "obtained:", "NotImplementedError"):
        assert needed in done.stdout, done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    reference = tmp_path / "reference.py"
    reference.write_text(practise.exercise_source("AD-2", "reference"), encoding="utf-8")
    done = subprocess.run([*command, str(reference)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0 and "✓" in done.stdout and "✗" not in done.stdout, done.stdout + done.stderr
    assert f"Compare with the project's: {practise.where('core.returns.td_residuals')}" in done.stdout


def test_the_first_difference_is_located_by_index():
    """For a failing call, `check` names the first element that differs, with both values."""
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    obtained = torch.tensor([[1.0, 2.0], [3.5, 4.0]])
    assert practise._first_difference(obtained, expected) == "at [1, 0]: expected 3, obtained 3.5"
    assert practise._first_difference(expected, expected) == ""


def test_every_bug_matches_exactly_once_and_changes_one_line():
    """A refactor that moves a bug's line breaks its anchor here, not silently."""
    assert len(practise.BUGS) >= 15
    assert len({bug.name for bug in practise.BUGS}) == len(practise.BUGS)
    marked = {node for nodes in marked_test_ids().values() for node in nodes}
    for bug in practise.BUGS:
        text = (ROOT / bug.file).read_text(encoding="utf-8")
        assert text.count(bug.old) == 1, f"{bug.name}: its line occurs {text.count(bug.old)} times in {bug.file}"
        changed = [(a, b) for a, b in zip(bug.old.splitlines(), bug.new.splitlines(), strict=True) if a != b]
        assert len(changed) == 1, f"{bug.name}: must change exactly one line"
        assert bug.tests and all("::" in node for node in bug.tests)
        assert set(bug.tests) <= marked | {n for n in bug.tests if "test_llm_rlhf" in n or "masked_helpers" in n}


def test_every_bug_is_caught_by_its_tests_and_the_unchanged_code_passes_them(tmp_path):
    """Each bug, planted in a copy of its file, fails at least one of its tests; the unchanged copy passes them all.

    One pytest run: each listed test runs once per bug and once per control, with the function that
    holds the bug's line compiled from the planted (or the unchanged) copy in place of the project's."""
    variants = practise.planted_variants(tmp_path)
    nodes = list(dict.fromkeys(node for bug in practise.BUGS for node in bug.tests))
    code, results, output = practise.run_graded({"variants": variants}, nodes)
    outcomes: dict[str, list[str]] = {label: [] for label in variants}
    for result in results:
        if result["variant"]:
            outcomes[result["variant"]].append(result["outcome"])
    problems = [f"{label}: {got}" for label, got in outcomes.items()
                if not got or (label.startswith("clean") and set(got) != {"passed"})
                or (label.startswith("bug") and "failed" not in got)]
    assert not problems, "\n".join(problems) + output[-2000:]


def test_a_bug_planted_in_a_copy_of_the_project_is_caught_and_the_copy_passes_without_it(tmp_path):
    """The bug hunt's own copy of the project: its tests pass, then fail once one bug is planted there."""
    bug = practise.BUGS[0]
    project = practise.copy_project(tmp_path / "project")
    code, results, output = practise.run_graded({}, list(bug.tests), root=project)
    assert code == 0 and results and {r["outcome"] for r in results} == {"passed"}, output[-2000:]
    practise.plant(bug, project)
    code, results, output = practise.run_graded({}, list(bug.tests), root=project)
    assert code == 1 and "failed" in {r["outcome"] for r in results}, output[-2000:]


def test_the_readme_counts_are_the_lists():
    """The README's Practise section states how many exercises and bugs there are: the lists' lengths."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"lists the {len(practise.EXERCISES)} exercises" in text
    assert f"The {len(practise.BUGS)} bugs" in text


def test_bughunt_plants_hints_and_reveals(tmp_path, capsys):
    """`bughunt --seed N` copies the project and changes one line; `--reveal` shows that line and its tests."""
    seed = 5
    bug = practise.BUGS[random.Random(seed).randrange(len(practise.BUGS))]
    assert practise.bughunt(seed, False, str(tmp_path / "hunt")) == 0
    hint = capsys.readouterr().out
    assert bug.hint in hint and bug.name not in hint  # where to look, not what it is
    planted = (tmp_path / "hunt" / bug.file).read_text(encoding="utf-8")
    assert bug.new in planted and bug.old not in planted
    assert (tmp_path / "hunt" / "README.md").read_text(encoding="utf-8") == (ROOT / "README.md").read_text(
        encoding="utf-8")
    assert practise.bughunt(seed, False, str(tmp_path / "hunt")) == 2  # never over a folder in use
    capsys.readouterr()
    assert practise.bughunt(seed, True, None) == 0
    reveal = capsys.readouterr().out
    changed = next(line for line in bug.new.splitlines() if line not in bug.old.splitlines())
    assert bug.name in reveal and f"+{changed}" in reveal and all(node in reveal for node in bug.tests)

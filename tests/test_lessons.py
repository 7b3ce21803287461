"""The lessons: each runs straight through, declares catalog IDs, documents itself, shows its
errata; the coverage matrix formula → lessons → tests holds for the topics the lessons cover."""

from __future__ import annotations

import dataclasses
import io
import json
import re

import pytest
import torch

from core.catalog import ERRATA, FORMULAS
from lessons import discover
from lessons import run_lesson as run_in_process
from lessons.__main__ import main, split_run_arguments
from lessons._common import NOTES, VERDICTS_FILE, Lesson
from lessons.catalog_scan import marked_tests
from lessons.table1 import SETTINGS
from lessons.table1 import main as table1_main

LESSONS = discover()
# The families of the catalog: every formula in them has a lesson and a marked test.
CORE_FAMILIES = ("PG", "IS", "TR", "CL", "AD", "KL", "RM", "DP", "GR", "DA", "DR", "AC")
# Every erratum of the notes is shown by a lesson.
CORE_ERRATA = ("E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8")


def test_lessons_are_numbered_and_declare_known_formula_ids():
    assert LESSONS, "no lessons found"
    numbers = [lesson.number for lesson in LESSONS]
    assert numbers == sorted(set(numbers))
    for lesson in LESSONS:
        assert lesson.formulas, lesson.name
        unknown = [fid for fid in lesson.formulas if fid not in FORMULAS]
        assert not unknown, f"{lesson.name} declares IDs the catalog does not know: {unknown}"
        assert len(set(lesson.formulas)) == len(lesson.formulas), lesson.name


@pytest.mark.parametrize("lesson", LESSONS, ids=[lesson.name for lesson in LESSONS])
def test_lesson_docstring_and_cells(lesson):
    source = lesson.path.read_text(encoding="utf-8")
    doc = source.split('"""')[1]
    assert doc.startswith(f"Lesson {lesson.number} — "), "the title names the lesson's number"
    assert "lesson = Lesson(__doc__)" in source
    for section in ("What it teaches", "Notes followed", "Formula IDs:", "Run:", "Deviations from the papers"):
        assert section in doc, f"{lesson.name}: the docstring lacks '{section}'"
    assert f"python -m lessons run {lesson.number}" in doc
    listed = re.search(r"Formula IDs: ([^.]*)\.", doc).group(1)
    assert tuple(re.findall(r"[A-Z]{2}-\d+", listed)) == lesson.formulas, "docstring IDs differ from FORMULAS"
    cited = set(re.findall(r"\d{3}_[0-9a-f]{16}\.txt", doc))
    assert cited and cited <= set(NOTES.values()), f"{lesson.name} cites unknown note files {cited}"
    assert re.search(r"[\u4e00-\u9fff]", doc), "the notes' own Chinese terms belong beside the English ones"
    assert source.count("# %%") >= 3, "steps are # %% cells"
    for fid in lesson.formulas:  # each declared formula is shown by a step, not only listed
        assert source.count(f'"{fid}"') >= 2, f"{lesson.name}: no step shows {fid}"


def test_each_core_erratum_is_checked_by_a_lesson():
    sources = {lesson.name: lesson.path.read_text(encoding="utf-8") for lesson in LESSONS}
    for erratum in CORE_ERRATA:
        assert erratum in ERRATA
        shown_in = [name for name, text in sources.items() if f'check_note(\n    "{erratum}"' in text
                    or f'check_note("{erratum}"' in text]
        assert shown_in, f"no lesson shows the evidence for erratum {erratum}"


def _execute_as_notebook(lesson, out, monkeypatch) -> tuple[str, int]:
    """Convert the lesson with jupytext and run every cell with nbclient in a fresh kernel whose
    working directory is lessons/, as Jupyter starts one; return (stdout of all cells, number of
    inline PNG figures)."""
    import jupytext
    from nbclient import NotebookClient

    notebook = jupytext.read(lesson.path)
    monkeypatch.setenv("PROXIMAL_LESSONS_OUT", str(out))  # the kernel inherits it: figures go to out/
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the tests use Agg; a kernel picks its inline backend
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(lesson.path.parent)}}).execute()
    text, figures = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stdout":
                text.append(output["text"])
            if "image/png" in output.get("data", {}):
                figures += 1
    return "".join(text), figures


# Lessons also run as notebooks (jupytext, then nbclient in a fresh kernel started in lessons/): two
# of them are run so, the kernel's start costing more than most lessons; the rest run as scripts in
# this process. Every lesson's verdicts are checked either way.
NOTEBOOK_LESSONS = (1, 6)


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSONS, ids=[lesson.name for lesson in LESSONS])
def test_lesson_runs_and_its_verdicts_hold(lesson, tmp_path, monkeypatch, capsys):
    """Every lesson runs straight through (as a notebook, cell by cell, for NOTEBOOK_LESSONS: each
    figure shown inline under its cell), saves each figure, and every outcome it claims holds under
    the fixed seed."""
    source = lesson.path.read_text(encoding="utf-8")
    if lesson.number in NOTEBOOK_LESSONS:
        out, inline_figures = _execute_as_notebook(lesson, tmp_path, monkeypatch)
        assert inline_figures == source.count("lesson.save("), "every figure is shown inline, under its cell"
    else:
        monkeypatch.setattr("sys.stdin", io.StringIO(""))  # the default run never waits for input
        threads = torch.get_num_threads()
        try:
            run_in_process(lesson, ["--out", str(tmp_path)])
        finally:
            torch.set_num_threads(threads)  # a lesson runs on one thread; the other tests keep their setting
        out = capsys.readouterr().out
    assert "Step 1 ·" in out and f"{lesson.name}: " in out  # header of the first step, closing line
    for erratum in re.findall(r'check_note\(\s*"(E\d)"', source):
        assert f"Check the note · {erratum}" in out
    saved = list((tmp_path / lesson.name).glob("*.png"))
    assert len(saved) == source.count("lesson.save("), "every figure is saved under OUT/<lesson>/"
    # Every outcome the lesson claims is computed from its numbers; under the fixed seed each one holds.
    record = json.loads((tmp_path / lesson.name / VERDICTS_FILE).read_text(encoding="utf-8"))
    assert record["lesson"] == lesson.name and record["seed"] == 0
    assert record["verdicts"], f"{lesson.name} claims no outcome through lesson.verdict or check_note"
    not_shown = [f"{v['claim']} (measured {v['evidence']})" for v in record["verdicts"] if not v["holds"]]
    assert not not_shown, f"{lesson.name}: claims its numbers do not show: {not_shown}"
    assert "NOT SHOWN" not in out
    assert len(record["verdicts"]) >= len(re.findall(r'check_note\(\s*"(E\d)"', source))


def test_a_lesson_runs_as_a_script(tmp_path, capsys, monkeypatch):
    """`python -m lessons run 1` (in this process): the same lesson as a plain script."""
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # the default run never waits for input
    threads = torch.get_num_threads()
    try:
        run_in_process(LESSONS[0], ["--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)  # a lesson runs on one thread; the other tests keep their setting
    out = capsys.readouterr().out
    assert f"{LESSONS[0].name}: " in out and "NOT SHOWN" not in out
    assert list((tmp_path / LESSONS[0].name).glob("*.png"))


def test_step_mode_pauses_after_each_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("\n\n\n"))
    lesson = Lesson("Lesson 99 — a test.", "99_test.py", argv=["--step", "--out", str(tmp_path)])
    lesson.step("first", "x = 1")
    lesson.step("second", ids=["PG-2"])
    lesson.done()
    out = capsys.readouterr().out
    assert out.count("Enter for the next step") == 2  # after step 1 and after the last step
    assert FORMULAS["PG-2"].statement in out  # with no formula given, the catalog statement is shown
    with pytest.raises(KeyError):
        lesson.step("unknown", ids=["XX-1"])
    # without __file__ (a notebook kernel) the title's number finds the lesson's file name
    first = LESSONS[0]
    assert Lesson(f"Lesson {first.number} — x", argv=["--out", str(tmp_path)]).name == first.name


def test_a_verdict_that_does_not_hold_is_printed_as_not_shown(tmp_path, capsys):
    lesson = Lesson("Lesson 99 — a test.", "99_test.py", argv=["--out", str(tmp_path)])
    assert lesson.verdict("the error halves", 1.2 < 1.0, "ratio 1.2, needs < 1") is False
    assert lesson.verdict("the loss falls", 0.3 < 0.5, "0.3 < 0.5") is True
    assert lesson.check_note("E1", ["a number"], "D is the prompt distribution", holds=False,
                             measured="Σ D = 0.9") is False
    lesson.done()
    out = capsys.readouterr().out
    assert "NOT SHOWN: the error halves (measured ratio 1.2, needs < 1)" in out
    assert "✓ the loss falls (0.3 < 0.5)" in out
    assert "NOT SHOWN:      D is the prompt distribution (measured Σ D = 0.9)" in out
    assert "What holds:" not in out  # the box never states a conclusion its numbers do not show
    assert "verdicts: 1 of 3 shown" in out
    record = json.loads((tmp_path / "99_test" / VERDICTS_FILE).read_text(encoding="utf-8"))
    assert [(v["claim"], v["holds"]) for v in record["verdicts"]] == [
        ("the error halves", False), ("the loss falls", True), ("E1: D is the prompt distribution", False)]


def _fake_train(configs: list):
    """`train` for lessons.table1 without training: the history's logged returns are set by the run's
    objective and seed, so that every score, mean and normalised score can be worked out by hand."""

    def train(config):
        configs.append(config)
        base = {"ratio": 20.0, "clip": 100.0}[config.objective]
        tail = [base + 10 * config.seed, base + 10 * config.seed]  # the last quarter of 8 updates
        returns = [0.0, None, 0.0, 0.0, 0.0, 0.0, 0.0, *tail]  # None: no episode ended in that update
        return {"history": [{"charts/episodic_return": r} for r in returns]}

    return train


def test_table1_scores_and_normalisation_by_hand(tmp_path, capsys, monkeypatch):
    """`python -m lessons.table1`: each row's runs take its objective and the game's settings; a run's
    score is the mean logged return over the last quarter of its updates; a row's normalised score
    is (mean score − random) / (best row's mean − random). The last line is that result as JSON."""
    import lessons.table1 as table1

    configs: list = []
    monkeypatch.setattr(table1, "train", _fake_train(configs))
    monkeypatch.setattr(table1, "random_policy_return", lambda env_id, episodes, seed: 5.0)
    result = table1_main(["--seeds", "2", "--total-steps", "256", "--rows", "1,3", "--out", str(tmp_path)])
    assert [(c.objective, c.clip_coef if c.objective == "clip" else None, c.seed) for c in configs] == [
        ("ratio", None, 0), ("ratio", None, 1), ("clip", 0.2, 0), ("clip", 0.2, 1)]
    assert all(c.env_id == "CartPole-v1" and c.total_steps == 256 and c.learning_rate == 5e-3 for c in configs)
    no_clip, clip = result["settings"]
    assert (no_clip["name"], clip["name"]) == (SETTINGS[0][0], SETTINGS[2][0])
    assert no_clip["scores"]["CartPole-v1"] == [20.0, 30.0] and clip["scores"]["CartPole-v1"] == [100.0, 110.0]
    # means 25 and 105; random 5: (25 − 5) / (105 − 5) = 0.2 and 1
    assert no_clip["normalised"]["CartPole-v1"] == pytest.approx(0.2) and no_clip["mean_normalised"] == \
        pytest.approx(0.2)
    assert clip["normalised"]["CartPole-v1"] == pytest.approx(1.0)
    assert result["random"] == {"CartPole-v1": 5.0} and result["seeds"] == [0, 1]
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [row["mean_normalised"] for row in printed["settings"]] == pytest.approx([0.2, 1.0])
    with pytest.raises(SystemExit):
        table1_main(["--rows", "12"])
    assert "rows must be" in capsys.readouterr().err


def test_table1_trains_for_real_at_a_tiny_size(tmp_path, capsys):
    """One real run of one row: the harness drives envs.train and reads a score from its history."""
    result = table1_main(["--seeds", "1", "--total-steps", "256", "--rows", "3", "--out", str(tmp_path)])
    (row,) = result["settings"]
    assert row["name"] == SETTINGS[2][0] and row["scores"]["CartPole-v1"][0] > 0
    assert result["random"]["CartPole-v1"] > 0 and row["normalised"]["CartPole-v1"] == pytest.approx(1.0)


def _run_lesson9_table1(result: dict, tmp_path, monkeypatch) -> tuple[list, dict, str]:
    """Lesson 9's setup cell and its Table 1 step, run with `--table1` and lessons.table1.run_table1
    replaced by a stand-in returning `result`: (the stand-in's calls, the verdicts saved, stdout)."""
    import ast
    import contextlib
    import sys

    import lessons.table1 as table1

    lesson = next(lesson for lesson in LESSONS if lesson.number == 9)
    source = lesson.path.read_text(encoding="utf-8")
    cells = re.split(r"^(?=# %%)", source, flags=re.MULTILINE)
    preamble, setup = cells[0], next(c for c in cells if c.startswith("# %% Setup"))
    step = next(c for c in cells if c.startswith("# %% Step") and "Table 1" in c.splitlines()[0])
    closing = cells[-1]
    calls: list = []
    monkeypatch.setattr(table1, "run_table1", lambda config, log=print: calls.append(config) or result)
    monkeypatch.setattr(sys, "argv", [str(lesson.path), "--table1", "--out", str(tmp_path)])
    namespace = {"__name__": "__main__", "__file__": str(lesson.path),
                 "__doc__": ast.get_docstring(ast.parse(source), clean=False)}
    out = io.StringIO()
    threads = torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(preamble + setup + step + closing, str(lesson.path), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    verdicts = json.loads((tmp_path / lesson.name / VERDICTS_FILE).read_text(encoding="utf-8"))["verdicts"]
    return calls, verdicts, out.getvalue()


def _table1_result(normalised: dict[str, float]) -> dict:
    return {"games": ["CartPole-v1"], "seeds": [0, 1, 2], "seconds": 1.0, "random": {"CartPole-v1": 20.0},
            "settings": [{"name": name, "paper": paper, "mean_score": {"CartPole-v1": 100 * normalised[name]},
                          "normalised": {"CartPole-v1": normalised[name]}, "mean_normalised": normalised[name]}
                         for name, _, paper in SETTINGS]}


def test_lesson_9_reads_its_table1_verdicts_from_run_table1(tmp_path, monkeypatch):
    """`python -m lessons run 9 --table1` calls lessons.table1.run_table1 with the lesson's seed and
    judges the paper's two claims on the scores it returns: checked on two made-up results, one where
    both claims hold and one where neither does."""
    names = [name for name, _, _ in SETTINGS]
    holds = {name: 0.5 + 0.03 * i for i, name in enumerate(names)}
    holds |= {names[0]: 0.05, "Clipping, ε = 0.2": 0.95}  # no clipping last, clipping at 0.2 the best
    calls, verdicts, out = _run_lesson9_table1(_table1_result(holds), tmp_path / "a", monkeypatch)
    assert len(calls) == 1 and calls[0].seed == 0 and calls[0].long is False
    assert [v["holds"] for v in verdicts] == [True, True], verdicts
    assert "rank 11 of 11, normalised 0.05" in verdicts[0]["evidence"]
    assert "normalised 0.95, best 0.95" in verdicts[1]["evidence"] and "NOT SHOWN" not in out

    fails = holds | {names[0]: 1.0, "Clipping, ε = 0.2": 0.6}  # no clipping first, clipping 0.4 below it
    _, verdicts, out = _run_lesson9_table1(_table1_result(fails), tmp_path / "b", monkeypatch)
    assert [v["holds"] for v in verdicts] == [False, False], verdicts
    assert "rank 1 of 11" in verdicts[0]["evidence"] and "NOT SHOWN" in out


def test_run_arguments_keep_lesson_options_apart():
    assert split_run_arguments(["1", "3", "--step", "--seed", "2"]) == ([1, 3], False, ["--step", "--seed", "2"])
    assert split_run_arguments(["--all", "--long"]) == ([], True, ["--long"])


def test_cli_refuses_an_unknown_lesson(capsys):
    assert main(["run", str(max(lesson.number for lesson in LESSONS) + 1)]) == 2
    assert "the lessons are" in capsys.readouterr().err


def test_cli_lists_every_lesson(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for lesson in LESSONS:
        assert lesson.title in out and ", ".join(lesson.formulas) in out


def test_every_formula_a_lesson_declares_has_a_marked_test():
    tested = marked_tests()
    missing = sorted({fid for lesson in LESSONS for fid in lesson.formulas} - set(tested))
    assert not missing, f"formulas shown by a lesson but verified by no marked test: {missing}"


def test_core_topics_have_a_lesson_and_a_marked_test(capsys):
    taught = {fid for lesson in LESSONS for fid in lesson.formulas}
    tested = set(marked_tests())
    family = [fid for fid in FORMULAS if fid.split("-")[0] in CORE_FAMILIES]
    assert not [fid for fid in family if fid not in taught], "formulas of the core topics without a lesson"
    assert not [fid for fid in family if fid not in tested], "formulas of the core topics without a marked test"
    # the command line agrees
    assert main(["coverage", "--only", *CORE_FAMILIES]) == 0
    assert f"{len(family)} of {len(family)} formulas have both" in capsys.readouterr().out


def test_plain_coverage_reports_honestly(capsys, monkeypatch):
    """The matrix names each formula that lacks a lesson or a test, and exits 1 then: checked on a
    catalog scan with two gaps made on purpose (one formula's tests, another's lessons removed)."""
    import lessons.__main__ as cli
    import lessons.catalog_scan

    assert main(["coverage"]) == 0  # today every formula has both
    full = marked_tests()
    untested, untaught = "AD-4", "CL-2"
    monkeypatch.setattr(lessons.catalog_scan, "marked_tests", lambda: {k: v for k, v in full.items() if k != untested})
    monkeypatch.setattr(cli, "discover", lambda: [
        dataclasses.replace(lesson, formulas=tuple(f for f in lesson.formulas if f != untaught)) for lesson in LESSONS])
    capsys.readouterr()
    code = main(["coverage"])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(rf"^{untested} .*← no ", out, flags=re.MULTILINE), out
    assert re.search(rf"^{untaught} .*← no ", out, flags=re.MULTILINE), out
    assert f"{len(FORMULAS) - 2} of {len(FORMULAS)} formulas have both" in out


def test_every_formula_has_a_lesson():
    taught = {fid for lesson in LESSONS for fid in lesson.formulas}
    missing = [fid for fid in FORMULAS if fid not in taught]
    assert not missing, f"formulas without a lesson: {missing}"


def test_full_coverage_every_formula_has_a_lesson_and_a_marked_test(capsys):
    """The whole catalog: `python -m lessons coverage` exits 0 and reports every formula complete."""
    untested = set(FORMULAS) - set(marked_tests())
    assert not untested, f"formulas without a marked test: {sorted(untested)}"
    assert main(["coverage"]) == 0
    assert f"{len(FORMULAS)} of {len(FORMULAS)} formulas have both" in capsys.readouterr().out

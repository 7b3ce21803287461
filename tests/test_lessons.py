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


@pytest.mark.slow
@pytest.mark.parametrize("lesson", LESSONS, ids=[lesson.name for lesson in LESSONS])
def test_lesson_runs_as_a_notebook_and_its_verdicts_hold(lesson, tmp_path, monkeypatch):
    """Every lesson, opened as a notebook (jupytext) and run cell by cell (nbclient) from lessons/,
    shows each figure inline and saves it, and every outcome it claims holds under the fixed seed."""
    out, inline_figures = _execute_as_notebook(lesson, tmp_path, monkeypatch)
    assert "Step 1 ·" in out and f"{lesson.name}: " in out  # header of the first step, closing line
    source = lesson.path.read_text(encoding="utf-8")
    for erratum in re.findall(r'check_note\(\s*"(E\d)"', source):
        assert f"Check the note · {erratum}" in out
    saved = list((tmp_path / lesson.name).glob("*.png"))
    assert len(saved) == source.count("lesson.save("), "every figure is saved under OUT/<lesson>/"
    assert inline_figures == len(saved), "every figure is shown inline, under its cell"
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


def test_table1_command_runs_at_a_tiny_size(tmp_path, capsys):
    """`python -m lessons.table1`: options from Table1Config, a subset of rows, the last line one JSON object."""
    result = table1_main(["--seeds", "1", "--total-steps", "256", "--rows", "1,3", "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == json.loads(json.dumps(result))
    assert result["games"] == ["CartPole-v1"] and result["seeds"] == [0]
    assert [row["name"] for row in result["settings"]] == [SETTINGS[0][0], SETTINGS[2][0]]
    for row in result["settings"]:
        assert len(row["scores"]["CartPole-v1"]) == 1 and row["scores"]["CartPole-v1"][0] > 0
    # normalised so that the best of the rows run scores 1
    assert max(row["normalised"]["CartPole-v1"] for row in result["settings"]) == pytest.approx(1.0)
    with pytest.raises(SystemExit):
        table1_main(["--rows", "12"])
    assert "rows must be" in capsys.readouterr().err


def test_lesson_9_runs_the_table1_command():
    source = next(lesson for lesson in LESSONS if lesson.number == 9).path.read_text(encoding="utf-8")
    assert "from lessons.table1 import" in source and "run_table1(" in source


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

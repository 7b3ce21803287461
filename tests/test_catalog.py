"""The formula catalog: it mirrors FORMULAS.md, and every formula implemented in core/ has a
test marked with its ID."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import core
from core.catalog import ERRATA, FORMULAS, IMPLEMENTED
from lessons.catalog_scan import marked_tests

ROOT = Path(__file__).resolve().parent.parent
NOTES_CATALOG = ROOT.parent / "shared" / "FORMULAS.md"


def import_all_core_modules():
    for module in pkgutil.iter_modules(core.__path__):
        importlib.import_module(f"core.{module.name}")


def test_every_formula_implemented_in_core_has_a_marked_test():
    import_all_core_modules()
    implemented_in_core = {fid for fid, where in IMPLEMENTED.items() if any(w.startswith("core.") for w in where)}
    assert implemented_in_core, "no @implements found in core/"
    tested = marked_tests()
    missing = sorted(implemented_in_core - set(tested))
    assert not missing, f"formulas implemented in core/ without a @pytest.mark.formula test: {missing}"


def test_marked_ids_exist_in_the_catalog():
    unknown = sorted(set(marked_tests()) - set(FORMULAS))
    assert not unknown


def test_catalog_entries_are_complete():
    assert len(FORMULAS) >= 48
    for fid, formula in FORMULAS.items():
        assert re.fullmatch(r"[A-Z]{2}-\d+", fid)
        assert formula.id == fid and formula.statement and formula.notes and formula.check
    assert sorted(ERRATA) == [f"E{i}" for i in range(1, 9)]


# The notes' own catalog (FORMULAS.md beside the notes; a clone does not have it): its formula IDs,
# family by family as (family, how many), and its errata. Copied from that file; the test below
# compares the project's catalog with this copy on every clone, and the copy with the file where
# the file is present.
NOTES_IDS = (("PG", 8), ("IS", 2), ("TR", 4), ("CL", 4), ("AD", 7), ("RM", 6), ("KL", 3), ("DP", 3), ("GR", 3),
             ("DA", 4), ("DR", 2), ("AC", 2))
NOTES_ERRATA = 8


def test_catalog_matches_the_notes_catalog():
    ids_in_notes = [f"{family}-{i}" for family, count in NOTES_IDS for i in range(1, count + 1)]
    assert list(FORMULAS) == ids_in_notes, "the catalog's IDs (in the notes' order) differ from the notes'"
    assert list(ERRATA) == [f"E{i}" for i in range(1, NOTES_ERRATA + 1)]
    if NOTES_CATALOG.is_file():  # the copy above still matches the notes' file
        text = NOTES_CATALOG.read_text(encoding="utf-8")
        assert re.findall(r"^\| ([A-Z]{2}-\d+) \|", text, flags=re.MULTILINE) == ids_in_notes
        assert set(re.findall(r"^- (E\d+) ", text, flags=re.MULTILINE)) == set(ERRATA)


def test_every_formula_id_the_project_writes_is_in_the_catalog():
    """The clone's own files (code, lessons, tests, READMEs, the C kernel) cite formulas by ID; an ID
    that the catalog does not know (a typo, a renumbered formula) is named with the files citing it."""
    cited: dict[str, set[str]] = {}
    families = "|".join(fid.split("-")[0] for fid in dict.fromkeys(FORMULAS))
    pattern = re.compile(rf"\b(?:{families})-\d+\b")
    files = [p for d in ("core", "envs", "llm", "lessons", "tests") for p in (ROOT / d).rglob("*")
             if p.suffix in (".py", ".md", ".c")] + sorted(ROOT.glob("*.md"))
    for path in files:
        for fid in pattern.findall(path.read_text(encoding="utf-8")):
            cited.setdefault(fid, set()).add(path.relative_to(ROOT).as_posix())
    assert len(cited) >= len(FORMULAS) // 2, "the scan finds the IDs the project cites"
    unknown = {fid: sorted(where) for fid, where in cited.items() if fid not in FORMULAS}
    assert not unknown, f"formula IDs the catalog does not know: {unknown}"


# ---- the catalog a reader sees: lessons/FORMULAS.md, python -m lessons verify, note citations ----

def test_lessons_formulas_md_is_generated_from_the_catalog():
    from lessons.catalog_scan import CATALOG_MD, render_markdown

    expected = render_markdown()
    current = CATALOG_MD.read_text(encoding="utf-8") if CATALOG_MD.is_file() else ""
    assert current == expected, (
        "lessons/FORMULAS.md differs from core/catalog.py (a test, function or lesson was added or renamed); "
        "rewrite it with: python -m lessons catalog --write")


def test_every_formula_has_a_source_in_the_notes_and_a_readable_statement():
    from core.catalog import FAMILIES, NOTES

    for fid, formula in FORMULAS.items():
        assert formula.family in FAMILIES, fid
        assert formula.sources, f"{fid} has no source in the notes"
        for source in formula.sources:
            assert source.note in NOTES, (fid, source.note)
            assert source.section in NOTES[source.note].sections, (fid, source.section)
            assert source.term_zh and source.term_en, fid
        assert not re.search(r"\\[a-z]+", formula.statement), f"{fid}: LaTeX in a statement meant for a terminal"
    assert any(re.search(r"[\u4e00-\u9fff]", s.term_zh) for f in FORMULAS.values() for s in f.sources)
    for note in NOTES.values():
        assert note.title_zh and note.title_en and note.short and note.file.startswith(note.number)
    for key, text in ERRATA.items():
        assert re.match(r"\((\d{3})\)", text) and text[1:4] in NOTES, key


def test_the_static_scans_agree_with_the_imports():
    import_all_core_modules()
    importlib.import_module("llm.rlhf")
    from lessons.catalog_scan import implemented_by

    registered = {fid: sorted(names) for fid, names in IMPLEMENTED.items() if names}
    scanned = {fid: sorted(names) for fid, names in implemented_by().items()}
    assert {fid: names for fid, names in scanned.items() if any(n.startswith(("core.", "llm.rlhf.")) for n in names)} \
        == {fid: names for fid, names in registered.items()}
    # every @pytest.mark.formula("ID") written in a test file is found by the scan that verify uses
    from lessons.catalog_scan import marked_test_ids

    nodes = marked_test_ids()
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == "test_catalog.py":  # writes formula marks into temporary files as test data
            continue
        written = set(re.findall(r"""formula\(\s*["']([A-Z]{2}-\d+)["']\s*\)""", path.read_text(encoding="utf-8")))
        found = {fid for fid, ids in nodes.items() if any(n.startswith(f"tests/{path.name}::") for n in ids)}
        assert found == written, path.name


def test_lessons_of_reads_the_lessons_declared_ids():
    from lessons import discover
    from lessons.catalog_scan import lessons_of

    declared: dict[str, list[str]] = {}
    for lesson in discover():
        for fid in lesson.formulas:
            declared.setdefault(fid, []).append(lesson.path.name)
    assert lessons_of() == declared


def test_first_citation_of_a_note_in_a_module_gives_its_short_title():
    """A clone has no notes: "note 003" resolves through the notes table of lessons/FORMULAS.md,
    and each module that cites a note names it once with its short title, "note 003 (PPO derived)"."""
    from core.catalog import NOTES

    citation = re.compile(r"\b[Nn]otes? (\d{3}(?:(?:, | and |–)\d{3})*)")
    problems = []
    for path in sorted(p for d in ("core", "envs", "llm") for p in (ROOT / d).rglob("*.py")):
        if path.name == "catalog.py":
            continue
        text = " ".join(path.read_text(encoding="utf-8").split())
        cited = set()
        for span in citation.findall(text):
            for part in re.split(r", | and ", span):
                low, _, high = part.partition("–")
                cited |= {f"{n:03d}" for n in range(int(low), int(high or low) + 1)}
        for number in sorted(cited):
            if number not in NOTES:
                problems.append(f"{path.relative_to(ROOT)} cites note {number}, which the catalog does not know")
            elif f"{number} ({NOTES[number].short}" not in text:
                problems.append(f"{path.relative_to(ROOT)}: cite note {number} once as "
                                f"'note {number} ({NOTES[number].short})'")
    for path in sorted((ROOT / "lessons").glob("[0-9][0-9]_*.py")):  # lessons cite the notes by file name
        doc = path.read_text(encoding="utf-8").split('"""')[1]
        for note in NOTES.values():
            if note.file in doc and f"{note.file} ({note.short})" not in doc:
                problems.append(f"lessons/{path.name}: cite {note.file} once as '{note.file} ({note.short})'")
    assert not problems, "\n".join(problems)


def test_verify_runs_the_marked_tests_of_one_formula():
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "lessons", "verify", "DA-4"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_advantages.py::" in done.stdout and "PASSED" in done.stdout and " passed" in done.stdout


def test_verify_names_the_valid_families_for_an_unknown_id(capsys):
    from lessons.__main__ import main

    assert main(["verify", "ZZ-9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ZZ-9" in err and "PG-1…PG-8" in err and "AC-1…AC-2" in err


def test_readme_says_how_to_read_the_catalog_and_verify_a_formula():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Formula traceability", 1)[1].split("\n## ", 1)[0]
    for needed in ("lessons/FORMULAS.md", "python -m lessons verify", "python -m lessons catalog --write"):
        assert needed in section, needed


def test_marked_tests_reads_the_marks_of_a_tests_folder(tmp_path):
    """The coverage check above is only as good as this scan: it must find marks on tests and
    count each file once per ID."""
    (tmp_path / "test_a.py").write_text(
        'import pytest\n\n@pytest.mark.formula("AD-4")\n@pytest.mark.formula( "CL-1" )\ndef test_x():\n    pass\n\n'
        '@pytest.mark.formula("AD-4")\ndef test_y():\n    pass\n'
    )
    (tmp_path / "test_b.py").write_text(
        'formula = __import__("pytest").mark.formula\n\n@formula("CL-1")\ndef test_z():\n    pass\n'
    )
    (tmp_path / "helper.py").write_text('@pytest.mark.formula("PG-1")\n')  # not a test file
    assert marked_tests(tmp_path) == {"AD-4": ["test_a.py"], "CL-1": ["test_a.py", "test_b.py"]}
    # an ID implemented in core/ but marked nowhere in that folder is what the coverage test reports
    import_all_core_modules()
    assert "GR-1" in IMPLEMENTED and "GR-1" not in marked_tests(tmp_path)


def test_implements_refuses_unknown_ids():
    from core.catalog import implements

    with pytest.raises(KeyError, match="ZZ-9"):
        implements("ZZ-9")

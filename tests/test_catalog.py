"""The formula catalog: it mirrors FORMULAS.md, and every formula implemented in core/ has a
test marked with its ID."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import core
from core.catalog import ERRATA, FORMULAS, IMPLEMENTED, marked_tests

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


@pytest.mark.skipif(not NOTES_CATALOG.is_file(), reason="the notes' FORMULAS.md is not beside this checkout")
def test_catalog_matches_the_notes_catalog():
    text = NOTES_CATALOG.read_text(encoding="utf-8")
    ids_in_notes = set(re.findall(r"^\| ([A-Z]{2}-\d+) \|", text, flags=re.MULTILINE))
    errata_in_notes = set(re.findall(r"^- (E\d+) ", text, flags=re.MULTILINE))
    assert ids_in_notes == set(FORMULAS)
    assert errata_in_notes == set(ERRATA)


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

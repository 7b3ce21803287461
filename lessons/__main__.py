"""`python -m lessons`: list, run and check the coverage of the lessons.

    python -m lessons [list]                       the lessons with their formula IDs
    python -m lessons run N [N ...] [--step] ...   run lessons; --step, --long, --seed, --out are passed on
    python -m lessons run --all                    run every lesson straight through
    python -m lessons coverage [--only PG IS ...]  formula → lessons → tests; exit 1 if one lacks either
    python -m lessons catalog [ID ...]             a formula's statement, sources, code, lessons and tests
    python -m lessons catalog --write              regenerate lessons/FORMULAS.md (lessons/catalog_scan.py)
    python -m lessons verify ID|FAMILY|all [...]   run the tests marked with those formulas; pytest's exit code
    python -m lessons exercise [ID]                write exercises/<id>_<function>.py to fill in (no ID: the list)
    python -m lessons check ID [FILE]              grade your function with the formula's tests (lessons/practise.py)
    python -m lessons bughunt [--seed N] [--reveal]  plant one silent bug in a copy of the project; find it
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import subprocess
import sys
import time

from lessons import discover, find, run_lesson


def list_lessons() -> int:
    lessons = discover()
    print(f"{len(lessons)} lessons (python -m lessons run N [--step]):\n")
    for lesson in lessons:
        print(f"  {lesson.number:2d}  {lesson.title}")
        print(f"      {lesson.name}.py · {', '.join(lesson.formulas)}")
    return 0


def run(numbers: list[int], run_all: bool, passed_on: list[str]) -> int:
    try:
        lessons = discover() if run_all else [find(n) for n in numbers]
    except KeyError as error:
        print(error.args[0], file=sys.stderr)
        return 2
    if not lessons:
        print("name the lessons to run (python -m lessons run 1 3) or pass --all", file=sys.stderr)
        return 2
    timings = []
    for lesson in lessons:
        start = time.perf_counter()
        run_lesson(lesson, passed_on)
        timings.append((lesson, time.perf_counter() - start))
    if len(lessons) > 1:
        print("\nRan:")
        for lesson, seconds in timings:
            print(f"  {lesson.number:2d}  {lesson.name:<32} {seconds:6.1f} s")
    return 0


def _implemented_in_core() -> set[str]:
    import core
    from core.catalog import IMPLEMENTED

    for module in pkgutil.iter_modules(core.__path__):
        importlib.import_module(f"core.{module.name}")
    return {fid for fid, where in IMPLEMENTED.items() if where}


def coverage(only: list[str], implemented: bool) -> int:
    from core.catalog import FORMULAS
    from lessons.catalog_scan import marked_tests

    lessons_of: dict[str, list[str]] = {fid: [] for fid in FORMULAS}
    for lesson in discover():
        for fid in lesson.formulas:
            lessons_of.setdefault(fid, []).append(f"{lesson.number:02d}")
    tests_of = marked_tests()
    unknown = sorted(set(lessons_of) - set(FORMULAS))

    selected = list(FORMULAS)
    if only:
        wanted = {w.upper() for part in only for w in part.split(",") if w}
        selected = [fid for fid in selected if fid in wanted or fid.split("-")[0] in wanted]
    if implemented:
        in_core = _implemented_in_core()
        selected = [fid for fid in selected if fid in in_core]

    print(f"{'formula':<8} {'lessons':<12} tests")
    print(f"{'-' * 7:<8} {'-' * 11:<12} {'-' * 40}")
    no_lesson, no_test = [], []
    for fid in selected:
        lessons = ", ".join(lessons_of[fid]) or "—"
        tests = ", ".join(t.removeprefix("test_").removesuffix(".py") for t in tests_of.get(fid, [])) or "—"
        flags = []
        if not lessons_of[fid]:
            no_lesson.append(fid)
            flags.append("no lesson")
        if fid not in tests_of:
            no_test.append(fid)
            flags.append("no test")
        mark = f"   ← {' and '.join(flags)}" if flags else ""
        print(f"{fid:<8} {lessons:<12} {tests}{mark}")

    complete = len(selected) - len(set(no_lesson) | set(no_test))
    print(f"\n{complete} of {len(selected)} formulas have both a lesson and a marked test.")
    if no_lesson:
        print(f"Missing a lesson ({len(no_lesson)}): {', '.join(no_lesson)}")
    if no_test:
        print(f"Missing a marked test ({len(no_test)}): {', '.join(no_test)}")
    if unknown:
        print(f"Lessons declare IDs the catalog does not know: {', '.join(unknown)}")
    return 1 if (no_lesson or no_test or unknown) else 0


def _select(words: list[str]) -> list[str] | None:
    """Formula IDs named by `words` (IDs, families such as AD, or all), in catalog order; None if one is unknown."""
    from core.catalog import FAMILIES, FORMULAS, family_ranges

    wanted = {w.upper() for word in words for w in word.split(",") if w}
    if "ALL" in wanted:
        return list(FORMULAS)
    unknown = sorted(wanted - set(FORMULAS) - set(FAMILIES))
    if unknown:
        print(f"unknown formula ID {', '.join(unknown)}; valid IDs: {family_ranges()} (or a family, or all)",
              file=sys.stderr)
        return None
    return [fid for fid in FORMULAS if fid in wanted or fid.split("-")[0] in wanted]


def catalog(ids: list[str], write: bool, check: bool) -> int:
    from lessons.catalog_scan import CATALOG_MD, describe, render_markdown

    if write or check:
        text = render_markdown()
        current = CATALOG_MD.read_text(encoding="utf-8") if CATALOG_MD.is_file() else ""
        if check:
            if current != text:
                print(f"{CATALOG_MD.name} is out of date: python -m lessons catalog --write", file=sys.stderr)
                return 1
            print(f"{CATALOG_MD.name} is up to date")
            return 0
        CATALOG_MD.write_text(text, encoding="utf-8")
        print(f"wrote lessons/{CATALOG_MD.name} ({'unchanged' if current == text else 'updated'})")
        return 0
    selected = _select(ids or ["all"])
    if selected is None:
        return 2
    print("\n\n".join(describe(fid) for fid in selected))
    return 0


def verify(ids: list[str], pytest_args: list[str]) -> int:
    """Run the tests marked with the formulas `ids` (node ids from the catalog's scan); pytest's exit code."""
    from lessons.catalog_scan import ROOT, marked_test_ids

    selected = _select(ids)
    if selected is None:
        return 2
    tests = marked_test_ids()
    untested = [fid for fid in selected if not tests.get(fid)]
    nodes = list(dict.fromkeys(node for fid in selected for node in tests.get(fid, [])))
    if untested:
        print(f"no test is marked with {', '.join(untested)}", file=sys.stderr)
    if not nodes:
        return 5  # pytest's own code for "no tests collected"
    print(f"verifying {', '.join(selected)}: {len(nodes)} marked test(s)", flush=True)
    marks = [arg for fid in selected for arg in ("--formula", fid)]
    command = [sys.executable, "-m", "pytest", "-v", "-v", "-p", "no:cacheprovider", "-p", "lessons.__main__",
               *marks, *pytest_args, *nodes]
    return subprocess.call(command, cwd=ROOT)


# `verify` runs pytest with `-p lessons.__main__ --formula ID`: these two hooks keep exactly the
# items marked with the IDs, including single parameters of a parametrized test.
def pytest_addoption(parser) -> None:
    parser.addoption("--formula", action="append", default=[], metavar="ID",
                     help="keep only the tests marked @pytest.mark.formula(ID) (python -m lessons verify)")


def pytest_collection_modifyitems(config, items) -> None:
    wanted = set(config.getoption("formula"))
    if not wanted:
        return
    keep = [item for item in items if wanted & {m.args[0] for m in item.iter_markers("formula") if m.args}]
    dropped = [item for item in items if item not in keep]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def exercise(ids: list[str]) -> int:
    """`exercise`: the list of exercises; `exercise ID ...`: write each one's file, never over the learner's."""
    from lessons.practise import EXERCISES, LESSON_LEVEL, default_file, function_name, write_exercise

    if not ids:
        print(f"{len(EXERCISES)} exercises (python -m lessons exercise ID, then python -m lessons check ID):\n")
        for fid, ex in EXERCISES.items():
            print(f"  {fid:<6} {function_name(ex.target):<28} exercises/{default_file(fid).name}")
        for fid, text in LESSON_LEVEL.items():
            print(f"  {fid:<6} lesson-level: {text}")
        return 0
    code = 0
    for word in ids:
        fid = word.upper()
        if fid in LESSON_LEVEL:
            print(f"{fid}: {LESSON_LEVEL[fid]}")
            continue
        if fid not in EXERCISES:
            print(f"no exercise for {word}; one of: {', '.join(EXERCISES)}", file=sys.stderr)
            code = 2
            continue
        path, written = write_exercise(fid)
        if written:
            print(f"wrote {path}: fill in {function_name(EXERCISES[fid].target)}, then python -m lessons check {fid}")
        else:
            print(f"{path} exists (your work is kept): python -m lessons check {fid}")
    return code


def check_exercise(formula_id: str, file: str | None) -> int:
    from lessons.practise import EXERCISES, LESSON_LEVEL, check

    fid = formula_id.upper()
    if fid in LESSON_LEVEL:
        print(f"{fid} has a lesson-level exercise: {LESSON_LEVEL[fid]}", file=sys.stderr)
        return 2
    if fid not in EXERCISES:
        print(f"no exercise for {formula_id}; one of: {', '.join(EXERCISES)}", file=sys.stderr)
        return 2
    return check(fid, file)


def split_run_arguments(argv: list[str]) -> tuple[list[int], bool, list[str]]:
    """`run 1 3 --all --step --seed 2` → ([1, 3], True, ["--step", "--seed", "2"]).

    Lesson numbers come first; everything after the first option goes to the lessons, so that
    the value of `--seed 2` is never taken for a lesson number.
    """
    numbers: list[int] = []
    rest = list(argv)
    while rest and rest[0].isdigit():
        numbers.append(int(rest.pop(0)))
    run_all = "--all" in rest
    return numbers, run_all, [a for a in rest if a != "--all"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m lessons", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="list the lessons with their formula IDs")
    run_parser = commands.add_parser(
        "run", help="run lessons: run N [N ...] or run --all",
        epilog="Other options (--step, --long, --seed N, --out DIR) go to each lesson.")
    run_parser.add_argument("numbers", nargs="*", type=int, help="lesson numbers")
    run_parser.add_argument("--all", action="store_true", help="run every lesson")
    cov_parser = commands.add_parser("coverage", help="formula → lessons → tests; exit 1 when one lacks either")
    cov_parser.add_argument("--only", nargs="+", default=[], metavar="FAMILY_OR_ID",
                            help="restrict to formula families or IDs, e.g. --only PG IS TR CL AD KL")
    cov_parser.add_argument("--implemented", action="store_true",
                            help="restrict to formulas that a function in core/ implements (@implements)")
    cat_parser = commands.add_parser("catalog", help="show formulas of the catalog, or regenerate lessons/FORMULAS.md")
    cat_parser.add_argument("ids", nargs="*", metavar="ID_OR_FAMILY", help="e.g. AD-4 or AD (default: all)")
    cat_parser.add_argument("--write", action="store_true", help="rewrite lessons/FORMULAS.md")
    cat_parser.add_argument("--check", action="store_true", help="exit 1 when lessons/FORMULAS.md is out of date")
    ver_parser = commands.add_parser(
        "verify", help="run the tests marked with formula IDs (verify AD-4, verify AD, verify all)",
        epilog="Options after -- go to pytest, e.g. verify AD-4 -- -x.")
    ver_parser.add_argument("ids", nargs="+", metavar="ID_OR_FAMILY", help="formula IDs, families, or all")
    ex_parser = commands.add_parser("exercise", help="write an exercise file for a formula (no ID: list them)")
    ex_parser.add_argument("ids", nargs="*", metavar="ID", help="formula IDs, e.g. AD-4")
    chk_parser = commands.add_parser("check", help="grade your exercise with the formula's marked tests")
    chk_parser.add_argument("id", metavar="ID", help="formula ID, e.g. AD-4")
    chk_parser.add_argument("file", nargs="?", help="your file (default: exercises/<id>_<function>.py)")
    bug_parser = commands.add_parser("bughunt", help="copy the project, plant one silent bug, tell where to look")
    bug_parser.add_argument("--seed", type=int, default=None, help="which bug (default: a random one)")
    bug_parser.add_argument("--reveal", action="store_true", help="show the bug's diff and the tests that catch it")
    bug_parser.add_argument("--dir", default=None, help="the folder for the copy (default: a temporary folder)")
    if argv[:1] == ["verify"] and "--" in argv:
        cut = argv.index("--")
        return verify(ver_parser.parse_args(argv[1:cut]).ids, argv[cut + 1:])
    if argv[:1] == ["run"] and not {"-h", "--help"} & set(argv):
        return run(*split_run_arguments(argv[1:]))
    args = parser.parse_args(argv)
    if args.command in (None, "list"):
        return list_lessons()
    if args.command == "run":  # only reached with --help
        return 0
    if args.command == "catalog":
        return catalog(args.ids, args.write, args.check)
    if args.command == "verify":
        return verify(args.ids, [])
    if args.command == "exercise":
        return exercise(args.ids)
    if args.command == "check":
        return check_exercise(args.id, args.file)
    if args.command == "bughunt":
        from lessons.practise import bughunt

        return bughunt(args.seed, args.reveal, args.dir)
    return coverage(args.only, args.implemented)


if __name__ == "__main__":
    sys.exit(main())

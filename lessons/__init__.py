"""Step-by-step lessons: one numbered script per topic of the notes, each a notebook of `# %%` cells.

    python -m lessons                     list the lessons and their formula IDs
    python -m lessons run 1 --step        run lesson 1, pausing after each step until Enter
    python -m lessons run --all           run every lesson straight through
    python -m lessons coverage            formula → lessons → tests; exits 1 when one lacks either

Run these from the repository root. To open a lesson as a notebook (VS Code, or Jupyter with
jupytext), start the kernel in the repository root too, so that `import core` works.

A lesson is one file `NN_topic.py` in this folder with a module docstring (first line: the
title) and a module-level `FORMULAS = ("PG-2", ...)` tuple of catalog IDs. Nothing else needs
registering: adding a lesson is adding that file. Listing and coverage read the docstring and
`FORMULAS` without running the script; `run` executes it as `__main__`.
"""

from __future__ import annotations

import ast
import re
import runpy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LessonInfo", "LESSON_DIR", "discover", "find", "run_lesson"]

LESSON_DIR = Path(__file__).resolve().parent
_LESSON_FILE = re.compile(r"^(\d{2})_[a-z0-9_]+\.py$")


@dataclass(frozen=True)
class LessonInfo:
    number: int
    name: str  # the file name without ".py", e.g. "01_policy_gradient"
    title: str  # the first line of the docstring, without "Lesson N — "
    formulas: tuple[str, ...]
    path: Path


def _read(path: Path) -> LessonInfo:
    """Title and FORMULAS of a lesson file, read from its syntax tree (the script is not run)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    doc = ast.get_docstring(tree)
    if not doc:
        raise ValueError(f"{path.name} has no module docstring")
    formulas = None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "FORMULAS"):
            formulas = ast.literal_eval(node.value)
    if not isinstance(formulas, tuple) or not all(isinstance(f, str) for f in formulas):
        raise ValueError(f"{path.name} must declare FORMULAS = ('ID', ...) as a tuple of strings")
    # "Lesson 3 — Importance sampling …." → "Importance sampling …"
    title = re.sub(r"^Lesson \d+\s*[—–-]\s*", "", doc.splitlines()[0].strip()).rstrip(".")
    return LessonInfo(int(path.name[:2]), path.stem, title, formulas, path)


def discover() -> list[LessonInfo]:
    """Every lesson in this folder, by number."""
    lessons = [_read(p) for p in sorted(LESSON_DIR.glob("*.py")) if _LESSON_FILE.match(p.name)]
    numbers = [lesson.number for lesson in lessons]
    duplicates = sorted({n for n in numbers if numbers.count(n) > 1})
    if duplicates:
        raise ValueError(f"two lessons share the number(s) {duplicates}")
    return lessons


def find(number: int) -> LessonInfo:
    for lesson in discover():
        if lesson.number == number:
            return lesson
    known = ", ".join(str(lesson.number) for lesson in discover())
    raise KeyError(f"no lesson {number}; the lessons are {known}")


def run_lesson(lesson: LessonInfo, argv: Sequence[str] = ()) -> None:
    """Run a lesson in this process as `__main__` with `argv` as its command line."""
    saved = sys.argv
    sys.argv = [str(lesson.path), *argv]
    try:
        runpy.run_path(str(lesson.path), run_name="__main__")
    finally:
        sys.argv = saved

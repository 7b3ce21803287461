"""What every lesson shares: its command line, steps that pause, "check the note" boxes, tables
and figures.

A lesson script starts with `lesson = Lesson(__doc__)` (its docstring's "Lesson N — title" names
it, so the cells also run in a notebook kernel that has no `__file__`) and then, cell by cell, calls
`lesson.step(...)` (a heading and the formula; under `--step` it first waits for Enter, so the
previous step's numbers stay on screen until the learner has read them), prints its numbers with
`table(...)` and its explanations with `say(...)` (one wrapped paragraph), shows the evidence for
an erratum with `lesson.check_note(...)`, saves figures with `lesson.save(fig, name)` and ends with
`lesson.done()`.

A lesson never asserts an outcome in prose. Every sentence that claims one (a comparison, a trend,
a success, an erratum's "what holds") goes through `lesson.verdict(claim, holds, evidence)` (or
`check_note(..., holds=...)`), with `holds` computed from the numbers the lesson just printed: the
claim is printed when they show it and "NOT SHOWN: <claim> (measured <evidence>)" when they do not.
`lesson.done()` writes every verdict to OUT/<lesson>/verdicts.json, where the tests read them.

Every lesson accepts the same options:
    --step      pause after each step until Enter (the default runs straight through)
    --long      the longer demonstration (more samples, more iterations)
    --seed N    the seed of every random stream in the lesson (default 0)
    --out DIR   where figures go: DIR/<lesson>/ (default runs/lessons/)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib.pyplot as plt  # the backend is matplotlib's choice (inline in a notebook, Agg with no display)
import torch

from core.catalog import ERRATA, FORMULAS
from core.catalog import NOTES as CATALOG_NOTES
from core.device import seed_everything

__all__ = ["Lesson", "Verdict", "NOTES", "VERDICTS_FILE", "table", "say", "fmt", "plt", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent
# Where figures go unless --out says otherwise; a notebook kernel has no command line, so the
# environment variable PROXIMAL_LESSONS_OUT sets it there (and in the notebook tests).
DEFAULT_OUT = Path(os.environ.get("PROXIMAL_LESSONS_OUT", ROOT / "runs" / "lessons"))
WIDTH = 92
VERDICTS_FILE = "verdicts.json"  # written by Lesson.done() into OUT/<lesson>/

# The five notes by number → file name, from the catalog (lessons cite them by file name).
NOTES = {number: note.file for number, note in CATALOG_NOTES.items()}

_ERRATUM = re.compile(r"\((\d{3})\)[^']*'([^']+)'[^:]*:\s*(.+)")


def _name_from_title(title: str) -> str:
    """The file name of "Lesson N — …", for a notebook kernel that has no __file__."""
    match = re.match(r"Lesson (\d+)", title)
    if match is None:
        return "lesson"
    number = int(match.group(1))
    from lessons import discover  # the package's registry reads the files without running them

    for info in discover():
        if info.number == number:
            return info.name
    return f"{number:02d}_lesson"


def _shown(path: Path) -> Path:
    """`path` relative to the working directory when it lies below it (shorter to read)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (not merely when ipykernel was imported, as a notebook runner does)."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    return type(get_ipython()).__name__ == "ZMQInteractiveShell"


@dataclass(frozen=True)
class Verdict:
    """One claimed outcome of a lesson: the sentence, whether the lesson's numbers show it, and the
    numbers themselves (what was measured, against which threshold)."""

    claim: str
    holds: bool
    evidence: str

    def line(self) -> str:
        """The claim as printed: itself when it holds, "NOT SHOWN: …" with the measurement when not."""
        if self.holds:
            return f"✓ {self.claim} ({self.evidence})"
        return f"NOT SHOWN: {self.claim} (measured {self.evidence})"


class Lesson:
    """The running lesson: parsed options, the step counter, the figure folder, the clock."""

    def __init__(self, doc: str, file: str | None = None, argv: Sequence[str] | None = None):
        self.title = doc.strip().splitlines()[0]
        self.name = Path(file).stem if file else _name_from_title(self.title)  # e.g. "01_policy_gradient"
        number = self.name.split("_", 1)[0].lstrip("0") or "0"
        parser = argparse.ArgumentParser(
            prog=f"python -m lessons run {number}",
            description=self.title,
            epilog="The lesson's docstring says what it teaches; `python -m lessons` lists all lessons.",
        )
        parser.add_argument("--step", action="store_true", help="pause after each step until Enter")
        parser.add_argument("--long", action="store_true", help="run the longer demonstration")
        parser.add_argument("--seed", type=int, default=0, help="seed of every random stream (default 0)")
        parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                            help="figures go to OUT/<lesson>/ (default runs/lessons/)")
        if _in_notebook():
            # A notebook kernel's argv holds the kernel's own options, not ours.
            self.args, _ = parser.parse_known_args([] if argv is None else argv)
        else:
            self.args = parser.parse_args(argv)
        self.out = self.args.out / self.name
        self.seed = self.args.seed
        self.long = self.args.long
        self._step = 0
        self._figures: list[Path] = []
        self.verdicts: list[Verdict] = []
        self._start = time.perf_counter()
        seed_everything(self.seed)
        # The lessons' tensors are tiny: one thread is as fast as several and never waits for
        # (or spins against) the other threads when the machine's cores are busy.
        torch.set_num_threads(1)
        rule = "═" * WIDTH
        print(rule)
        print(self.title)
        mode = "long demonstration" if self.long else "default run"
        pace = "pauses after each step (Enter to go on)" if self.args.step else "runs straight through (--step pauses)"
        print(f"{self.name} · seed {self.seed} · {mode} · {pace}")
        print(rule)

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh CPU random stream for one experiment, derived from --seed."""
        return torch.Generator().manual_seed(self.seed * 1_000 + offset)

    def _pause(self) -> None:
        if not self.args.step:
            return
        try:
            input("\n   ⏎  Enter for the next step ... ")
        except EOFError:  # stdin closed: nothing more to wait for
            self.args.step = False
        if not sys.stdin.isatty():
            print()

    def step(self, title: str, *formula: str, ids: Iterable[str] = ()) -> None:
        """Start a step: pause under --step (after the previous one), then a heading and its formula.

        `formula` lines are printed as given (plain Unicode); with none, the catalog statement of
        each ID in `ids` is printed instead.
        """
        ids = tuple(ids)
        for formula_id in ids:
            if formula_id not in FORMULAS:
                raise KeyError(f"unknown formula ID {formula_id!r}")
        if self._step:
            self._pause()
        self._step += 1
        tag = f"   [{', '.join(ids)}]" if ids else ""
        print()
        print("─" * WIDTH)
        print(f"Step {self._step} · {title}{tag}")
        lines = formula or tuple(FORMULAS[i].statement for i in ids)
        for line in lines:
            # long catalog statements wrap at their "; " clauses, continued with a hanging indent
            for part in textwrap.wrap(line, WIDTH - 4, break_on_hyphens=False, subsequent_indent="    ") or [""]:
                print(f"    {part}")
        print("─" * WIDTH)

    def _record(self, claim: str, holds, evidence: str) -> Verdict:
        found = Verdict(claim, bool(holds), evidence)
        self.verdicts.append(found)
        return found

    def verdict(self, claim: str, holds, evidence: str) -> bool:
        """Print `claim` when `holds` (computed from the lesson's numbers), else "NOT SHOWN: claim
        (measured evidence)"; record it for `done()`; return whether it held.

        `evidence` names the numbers and the threshold, e.g. "ratio 3.9 > 2".
        """
        found = self._record(claim, holds, evidence)
        say(found.line(), indent=4)
        return found.holds

    def check_note(self, erratum: str, evidence: Iterable[str], conclusion: str, *, holds, measured: str) -> bool:
        """A "check the note" box: the note's words, the numbers measured here, and what holds.

        `conclusion` is printed as "What holds" only when `holds` (computed from the evidence's
        numbers); otherwise as "NOT SHOWN", with `measured`. Recorded as a verdict; returns `holds`.
        """
        found = self._record(f"{erratum}: {conclusion}", holds, measured)
        match = _ERRATUM.match(ERRATA[erratum])
        if match is None:  # the catalog wording changed; print it whole rather than fail
            note, quote, verdict = "", ERRATA[erratum], ""
        else:
            note, quote, verdict = match.groups()
        source = f"note {note} ({CATALOG_NOTES[note].short})" if note in CATALOG_NOTES else note
        inner = WIDTH - 4
        print()
        print(f"  ┌─ Check the note · {erratum} · {source} ".ljust(WIDTH - 1, "─") + "┐")

        def put(label: str, text: str) -> None:
            wrapped = textwrap.wrap(text, inner - len(label)) or [""]
            for i, line in enumerate(wrapped):
                print(f"  │ {(label if i == 0 else ' ' * len(label))}{line}")

        put("The note says:  ", f"「{quote}」")
        if verdict:
            put("Catalog:        ", verdict)
        for i, line in enumerate(evidence):
            put("Evidence:       " if i == 0 else "                ", line)
        if found.holds:
            put("What holds:     ", f"{conclusion} ({measured})")
        else:
            put("NOT SHOWN:      ", f"{conclusion} (measured {measured})")
        print("  └" + "─" * (WIDTH - 3) + "┘")
        return found.holds

    def save(self, fig, filename: str) -> Path:
        """Save `fig` as OUT/<lesson>/<filename> (PNG) and close it; return the path."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / filename
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        if _in_notebook():
            from IPython.display import display

            display(fig)  # inline, under the cell that drew it
        plt.close(fig)
        self._figures.append(path)
        print(f"    figure → {_shown(path)}")
        return path

    def done(self) -> None:
        self._pause()
        seconds = time.perf_counter() - self._start
        print()
        print("═" * WIDTH)
        figures = f"{len(self._figures)} figure(s) in {_shown(self.out)}/" if self._figures else "no figures"
        shown = sum(v.holds for v in self.verdicts)
        print(f"{self.name}: {self._step} steps, {figures}, {seconds:.1f} s")
        print(f"verdicts: {shown} of {len(self.verdicts)} shown by this run's numbers")
        for found in self.verdicts:
            if not found.holds:
                print(f"  {found.line()}")
        print("═" * WIDTH)
        for line in practise_lines(self.name):
            print(line)
        self.write_verdicts()

    def write_verdicts(self) -> Path:
        """OUT/<lesson>/verdicts.json: every verdict of the run, in order, with the seed and mode."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / VERDICTS_FILE
        record = {"lesson": self.name, "seed": self.seed, "long": self.long,
                  "verdicts": [asdict(v) for v in self.verdicts]}
        path.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def practise_lines(lesson_name: str) -> list[str]:
    """The lesson's closing lines: its exercises (`python -m lessons exercise ID`), or the bug hunt."""
    from lessons.catalog_scan import lessons_of
    from lessons.practise import EXERCISES, LESSON_LEVEL, function_name

    ids = [fid for fid, files in lessons_of().items() if f"{lesson_name}.py" in files]
    exercises = [f"{fid} ({function_name(EXERCISES[fid].target).strip('_')})" for fid in ids if fid in EXERCISES]
    lines = []
    if exercises:
        lines.append(f"Practise: python -m lessons exercise ID, then python -m lessons check ID, for {len(exercises)} "
                     f"exercise(s) of this lesson: {', '.join(exercises)}.")
    lines += [f"Practise ({fid}, lesson-level): {LESSON_LEVEL[fid]}" for fid in ids if fid in LESSON_LEVEL]
    if not lines:
        lines.append("Practise: this lesson's formulas have no function of their own to write; the exercises of "
                     "the next lessons do (python -m lessons exercise lists them).")
    lines.append("Hunt a planted bug: python -m lessons bughunt.")
    return lines


def fmt(x, digits: int = 4) -> str:
    """A number for a table: fixed point when readable, scientific when tiny or huge."""
    if isinstance(x, str):
        return x
    if isinstance(x, torch.Tensor):
        x = x.item()
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    if x != 0 and (abs(x) < 10 ** (-digits) or abs(x) >= 10**6):
        return f"{x:.{max(digits - 2, 1)}e}"
    return f"{x:.{digits}f}"


def table(headers: Sequence[str], rows: Iterable[Sequence], digits: int = 4, indent: int = 4) -> None:
    """Print rows under headers, right-aligned, numbers through `fmt`."""
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    pad = " " * indent
    print(pad + "  ".join(h.rjust(w) for h, w in zip(headers, widths)))
    print(pad + "  ".join("-" * w for w in widths))
    for row in cells:
        print(pad + "  ".join(c.rjust(w) for c, w in zip(row, widths)))


def say(*sentences: str, indent: int = 4, blank: bool = False) -> None:
    """Print `sentences` as one paragraph wrapped at the lesson's text width (100 columns).

    Numbers are formatted by the caller (f-strings); `blank=True` puts an empty line before it.
    """
    if blank:
        print()
    text = " ".join(s.strip() for s in sentences if s.strip())
    pad = " " * indent
    print(textwrap.fill(text, 100, initial_indent=pad, subsequent_indent=pad, break_on_hyphens=False,
                        break_long_words=False))

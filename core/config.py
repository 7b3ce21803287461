"""Command lines generated from config dataclasses, and the resolved configuration of a run.

Every entry point has one dataclass whose fields carry a docstring (a string literal right
after the field, as in CleanRL's `Args`). `add_arguments` turns the fields into `--kebab-case`
options with that text as help: a `bool` field becomes `--flag/--no-flag`, a `Literal[...]`
field lists its values (argparse refuses any other with one line naming the flag). Defaults
live in the dataclass only; `from_arguments` builds the dataclass back, so validation in
`__post_init__` runs on what the user typed and names the field at fault.

A front end whose defaults differ by task (a preset table) gives those fields the default
`None` ("the preset's value") and fills them once with `dataclasses.replace`; `given_flags`
tells which fields the command line set, without parser tricks.

Every run prints its resolved configuration (`format_config`) and saves it beside its
metrics (`save_config`, `config.json`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

__all__ = [
    "field_docs",
    "field_choices",
    "check_choices",
    "add_arguments",
    "from_arguments",
    "parse_into",
    "given_flags",
    "config_to_dict",
    "format_config",
    "save_config",
]

C = TypeVar("C")


def field_docs(cls: type) -> dict[str, str]:
    """Field name → the docstring written under it in the class body (base classes included)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without `| None`, whether None was allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def field_choices(cls: type) -> dict[str, tuple]:
    """Field name → the values its `Literal[...]` annotation allows (fields of other types are absent)."""
    hints = typing.get_type_hints(cls)
    choices = {}
    for field in dataclasses.fields(cls):
        inner, _ = _unwrap_optional(hints[field.name])
        if typing.get_origin(inner) is Literal:
            choices[field.name] = typing.get_args(inner)
    return choices


def check_choices(config: Any) -> None:
    """Raise ValueError naming the first `Literal` field whose value is not one it allows
    (None passes where the annotation allows it: "the preset's value")."""
    for name, allowed in field_choices(type(config)).items():
        value = getattr(config, name)
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _none_or(converter):
    def convert(text: str):
        return None if text.strip().lower() in ("none", "null") else converter(text)

    convert.__name__ = getattr(converter, "__name__", "value")
    return convert


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return None


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one `--field-name` option per dataclass field, help text from its docstring.

    `bool` → `--flag/--no-flag`; `Literal["a", "b"]` → `{a,b}`; `X | None` also accepts `none`.
    A field whose default is None shows "(default: the preset's value)" when its docstring says so.
    """
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        inner, optional = _unwrap_optional(hints[field.name])
        default = _default_of(field)
        flag = "--" + field.name.replace("_", "-")
        # argparse formats help with %-interpolation; a literal % in a docstring must be doubled
        help_text = f"{docs.get(field.name, '')} (default: {default})".replace("%", "%%")
        if inner is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
            continue
        kwargs: dict[str, Any] = {}
        if typing.get_origin(inner) is Literal:
            values = typing.get_args(inner)
            kwargs["choices"] = [*values, None] if optional else list(values)
            converter = type(values[0])
            kwargs["metavar"] = "{" + ",".join(map(str, values)) + "}"
        else:
            converter = inner if inner in (int, float, str) else str
            kwargs["metavar"] = field.name.upper()
        parser.add_argument(
            flag,
            dest=field.name,
            type=_none_or(converter) if optional else converter,
            default=default,
            help=help_text,
            **kwargs,
        )


def from_arguments(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """Build `cls` from parsed arguments (fields absent from `args` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.init and hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def parse_into(cls: type[C], argv: list[str] | None = None, **parser_options: Any) -> C:
    """Parse a command line into `cls`: one option per field (`add_arguments`), then the dataclass,
    whose `__post_init__` checks the values; a value it refuses ends the program as argparse does
    with a bad flag, in one line naming the field (exit code 2). `parser_options` go to
    `argparse.ArgumentParser` (prog, description, epilog)."""
    parser = argparse.ArgumentParser(**parser_options)
    add_arguments(parser, cls)
    args = parser.parse_args(argv)
    try:
        return from_arguments(cls, args)
    except ValueError as exc:
        parser.error(str(exc))


def given_flags(argv: list[str], parser: argparse.ArgumentParser) -> set[str]:
    """The destinations of the options that appear in `argv` (what the user typed, as opposed to
    a default): used to name the flags a `--resume` ignores."""
    given = set()
    for action in parser._actions:
        for option in action.option_strings:
            if any(arg == option or arg.startswith(option + "=") for arg in argv):
                given.add(action.dest)
    return given


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (safe to store in a checkpoint's meta or a JSON line)."""
    return dataclasses.asdict(config)


def format_config(config: Any, title: str = "configuration") -> str:
    """The resolved configuration as aligned `name = value` lines, for the start of a run."""
    values = config_to_dict(config)
    width = max(map(len, values), default=0)
    lines = [f"{title}:"] + [f"  {name:<{width}} = {value!r}" for name, value in values.items()]
    return "\n".join(lines)


def save_config(config: Any, folder: str | os.PathLike, name: str = "config.json") -> Path:
    """Write the resolved configuration as `folder/config.json` (atomically) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(config_to_dict(config), indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path

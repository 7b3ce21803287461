"""Command lines generated from config dataclasses.

Every entry point has one dataclass whose fields carry a docstring (a string literal right
after the field, as in CleanRL's `Args`). `add_arguments` turns the fields into `--kebab-case`
options with that text as help; `from_arguments` builds the dataclass back, so validation in
`__post_init__` runs on what the user typed and names the field at fault.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any, TypeVar

__all__ = ["field_docs", "add_arguments", "from_arguments", "config_to_dict"]

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


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _scalar_type(annotation: Any) -> tuple[Any, bool]:
    """(converter, optional) for a field annotation such as `float | None`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        converter, _ = _scalar_type(args[0])
        return converter, True
    if annotation is bool:
        return _parse_bool, False
    if annotation in (int, float, str):
        return annotation, False
    return str, False


def _none_or(converter):
    def convert(text: str):
        return None if text.strip().lower() in ("none", "null") else converter(text)

    convert.__name__ = getattr(converter, "__name__", "value")
    return convert


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one `--field-name` option per dataclass field, help text from its docstring."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        converter, optional = _scalar_type(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = field.default_factory()  # type: ignore[misc]
        parser.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            type=_none_or(converter) if optional else converter,
            default=default,
            metavar=field.name.upper(),
            # argparse formats help with %-interpolation; a literal % in a docstring must be doubled
            help=f"{docs.get(field.name, '')} (default: {default})".replace("%", "%%"),
        )


def from_arguments(cls: type[C], args: argparse.Namespace, **overrides: Any) -> C:
    """Build `cls` from parsed arguments (fields absent from `args` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as a plain dict (safe to store in a checkpoint's meta or a JSON line)."""
    return dataclasses.asdict(config)

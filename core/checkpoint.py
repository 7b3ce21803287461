"""Atomic, versioned checkpoints that load without executing code from the file.

Format: one `torch.save` file holding a plain dictionary

    {"format_version": 1, "kind": str, "meta": dict, "state": dict}

`kind` says what wrote it ("ppo_agent" for the game agent; "llm_sft", "llm_rm", "llm_ppo", ...
for the language-model stages), `meta` holds plain Python values (config, step counters,
architecture), `state` holds tensors and nested dicts of tensors (model and optimiser state
dicts). Loading uses `torch.load(weights_only=True)`, which
refuses arbitrary pickled objects, so opening a checkpoint never runs code from it.

Writing is atomic: the bytes go to a temporary file in the same folder, are flushed and
fsync'ed, then `os.replace` renames it over the target. A crash or Ctrl-C mid-write leaves
the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT_VERSION", "CheckpointError", "save_checkpoint", "load_checkpoint"]

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, from a newer format, or of the wrong kind."""


def save_checkpoint(
    path: str | os.PathLike, kind: str, state: dict[str, Any], meta: dict[str, Any] | None = None
) -> Path:
    """Write `{"format_version", "kind", "meta", "state"}` to `path` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format_version": FORMAT_VERSION, "kind": kind, "meta": meta or {}, "state": state}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        # Never leave a half-written temporary file behind; the old checkpoint is untouched.
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    return path


def load_checkpoint(
    path: str | os.PathLike,
    kind: str | tuple[str, ...] | None = None,
    map_location: str | torch.device | None = "cpu",
) -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`; check its format version and kind.

    Raises `CheckpointError` with the path and the reason for a missing file, a corrupt or
    truncated file, a file that is not one of ours, a newer format, or a `kind` mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused the file's objects, or it is not a pickle at all
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a proximal checkpoint (it holds something other than tensors and "
            "plain values; such a file is not unpickled, since that could run code from it)"
        ) from None
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a proximal checkpoint ({type(exc).__name__}: {first_line})"
        ) from exc
    if not isinstance(payload, dict) or "format_version" not in payload or "state" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a proximal checkpoint (no format_version/state)")
    version = payload["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version!r}; this code reads up to {FORMAT_VERSION}"
        )
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        if payload.get("kind") not in kinds:
            raise CheckpointError(
                f"checkpoint {path} is of kind {payload.get('kind')!r}, expected {' or '.join(kinds)}"
            )
    return payload

"""Stage checkpoints: models, architecture and vocabulary, written atomically.

Each stage writes one file under the run folder (`sft.pt`, `rm.pt`, `ppo.pt`) with
`core.checkpoint.save_checkpoint`, which writes to a temporary file and renames it: a stage
interrupted mid-way leaves the previous stage's file intact and the pipeline resumes from it.
Loading rebuilds each model from the stored architecture and refuses, with the reason, a file
written with another vocabulary or (when the caller says what it expects) another architecture.

A wrapped Hugging Face model (`llm.model_interface.HFModel`) is stored the same way: its state_dict, and
as its architecture the source folder and the head; loading builds it from that folder
(`from_pretrained`, local files only) and loads the stored weights, so the folder must still be
where the run found it. The vocabulary is the folder's tokenizer (`HFTokenizer.meta`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from llm.gpt import GPT, GPTConfig, check_architecture
from llm.model_interface import HFTokenizer, load_hf_model
from llm.tokenizer import CharTokenizer

__all__ = ["save_stage", "load_stage", "stage_tokenizer", "STAGE_KINDS"]

# the kind written by each stage (the method stages store their trained policy as "policy")
STAGE_KINDS = {
    stage: f"llm_{stage}" for stage in ("sft", "rm", "ppo", "dpo", "ipo", "kto", "grpo", "dapo", "dr_grpo")
}


def save_stage(
    path: str | Path, kind: str, models: dict[str, GPT], tok: CharTokenizer, meta: dict[str, Any]
) -> Path:
    """Write `models` (name → GPT) with their architectures, the vocabulary and `meta`."""
    state = {
        name: {k: v.detach().cpu() for k, v in m.state_dict().items()} for name, m in models.items()
    }
    full_meta = dict(meta)
    full_meta["arch"] = {name: m.arch() for name, m in models.items()}
    full_meta["vocab"] = tok.meta()
    return save_checkpoint(path, kind, state, full_meta)


def load_stage(
    path: str | Path,
    tok: CharTokenizer,
    kind: str | tuple[str, ...] | None = None,
    expected_config: GPTConfig | None = None,
    device="cpu",
) -> tuple[dict[str, GPT], dict[str, Any]]:
    """Load every model of a stage checkpoint. Returns (name → GPT on `device`, meta).

    Raises `CheckpointError` for a missing or corrupt file, a wrong kind, another vocabulary,
    an architecture other than `expected_config` (when given), or weights that do not fit.
    """
    payload = load_checkpoint(path, kind=kind, map_location="cpu")
    meta = payload["meta"]
    try:
        tok.check_vocab(meta.get("vocab", {}), source=f"checkpoint {path}")
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    models = {}
    for name, weights in payload["state"].items():
        arch = meta.get("arch", {}).get(name)
        if arch is None:
            raise CheckpointError(f"checkpoint {path} has no architecture for model {name!r}")
        if "hf" in arch:
            models[name] = _load_wrapped(path, name, arch, weights, expected_config, device)
            continue
        if expected_config is not None:
            try:
                check_architecture(
                    arch, {"config": expected_config.__dict__}, source=f"checkpoint {path}"
                )
            except ValueError as exc:
                raise CheckpointError(
                    f"{exc}; rerun the earlier stage or pass the same model settings"
                ) from exc
        config = GPTConfig(**arch["config"])
        if config.vocab_size != tok.vocab_size:
            raise CheckpointError(
                f"checkpoint {path} has vocab_size {config.vocab_size}, "
                f"the tokenizer {tok.vocab_size}"
            )
        model = GPT(config, head=arch["head"])
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {path}: weights of {name!r} do not fit its architecture ({exc})"
            ) from exc
        models[name] = model.to(device)
    return models, meta


def _load_wrapped(path, name: str, arch: dict, weights: dict, expected_config, device):
    """A wrapped model: built from its source folder, then the stored weights loaded."""
    if expected_config is not None:
        raise CheckpointError(
            f"checkpoint {path} holds a model of {arch['hf']}, this run the project's GPT: pass --model {arch['hf']}"
        )
    try:
        model = load_hf_model(arch["hf"], head=arch["head"])
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc} (the folder its models were loaded from)") from exc
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights of {name!r} do not fit {arch['hf']} ({exc})") from exc
    return model.to(device)


def stage_tokenizer(path: str | Path) -> CharTokenizer | HFTokenizer:
    """The tokenizer a stage checkpoint was written with: the character tokenizer, or the
    tokenizer of the wrapped model's folder."""
    vocab = load_checkpoint(path, map_location="cpu")["meta"].get("vocab", {})
    if "hf" in vocab:
        try:
            return HFTokenizer.load(vocab["hf"])
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: {exc}") from exc
    return CharTokenizer()

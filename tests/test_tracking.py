"""`--track tensorboard`: every metric of metrics.jsonl is mirrored into TensorBoard event files."""

from __future__ import annotations

import math

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from core.metrics import MetricsWriter, read_metrics


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Read every scalar back with TensorBoard's own reader: tag → [(step, value)]."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_mirrors_every_finite_value_under_the_same_name(tmp_path):
    logged = [
        (128, {"charts/episodic_return": 1.5, "losses/approx_kl": 0.01, "charts/sps": 900.0}),
        (256, {"charts/episodic_return": 2.25, "losses/approx_kl": float("nan")}),
    ]
    with MetricsWriter(tmp_path / "metrics.jsonl", track="tensorboard") as writer:
        for step, values in logged:
            writer.write(step, values)

    scalars = _scalars(tmp_path)
    jsonl = read_metrics(tmp_path / "metrics.jsonl")
    # The event file holds exactly the finite values of the JSONL, under CleanRL's names.
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in jsonl:
        for name, value in record.items():
            if name != "step" and value is not None:
                expected.setdefault(name, []).append((record["step"], value))
    assert set(scalars) == set(expected) == {"charts/episodic_return", "losses/approx_kl", "charts/sps"}
    for name, points in expected.items():
        assert [s for s, _ in scalars[name]] == [s for s, _ in points]
        assert [v for _, v in scalars[name]] == pytest.approx([v for _, v in points], rel=1e-6)
    assert scalars["losses/approx_kl"] == [(128, pytest.approx(0.01))]  # the NaN was skipped, not written
    assert math.isnan(logged[1][1]["losses/approx_kl"]) and jsonl[1]["losses/approx_kl"] is None


def test_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(ValueError, match="track must be one of 'none', 'tensorboard'"):
        MetricsWriter(tmp_path / "metrics.jsonl", track="wandb")


def test_game_trainer_tracks_to_tensorboard(tmp_path):
    """`python -m envs.train --track tensorboard`: the run folder's event file holds the JSONL's curves."""
    from envs.train import main

    out = tmp_path / "run"
    main(["--env", "CartPole-v1", "--num-envs", "4", "--num-steps", "32", "--minibatch-size", "64",
          "--total-steps", "384", "--no-progress", "--device", "cpu", "--out", str(out), "--track", "tensorboard"])
    scalars = _scalars(out)
    jsonl = read_metrics(out / "metrics.jsonl")
    assert len(jsonl) == 3
    for name in ("losses/approx_kl", "losses/policy_loss", "charts/learning_rate", "charts/episodic_return"):
        steps = [r["step"] for r in jsonl if r.get(name) is not None]
        assert [s for s, _ in scalars[name]] == steps, name
        assert [v for _, v in scalars[name]] == pytest.approx([r[name] for r in jsonl if r.get(name) is not None],
                                                              rel=1e-6)


def test_llm_pipeline_tracks_to_tensorboard(tmp_path):
    """`python -m llm.pipeline --track tensorboard`: SFT's loss curve is in the run folder's event file."""
    from llm.pipeline import main

    main(["--stage", "sft", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--sft-steps", "12",
          "--sft-batch-size", "8", "--sft-examples", "200", "--no-progress", "--device", "cpu",
          "--out", str(tmp_path), "--track", "tensorboard"])
    jsonl = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "sft/loss" in r]
    scalars = _scalars(tmp_path)
    assert len(jsonl) >= 2
    assert [s for s, _ in scalars["sft/loss"]] == [r["step"] for r in jsonl]
    assert [v for _, v in scalars["sft/loss"]] == pytest.approx([r["sft/loss"] for r in jsonl], rel=1e-6)

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

"""llm.compare: its settings are checked, and its figures are drawn from the runs' records."""

from __future__ import annotations

import pytest

from llm.compare import CompareConfig, plot_frontier, plot_group_methods


@pytest.mark.parametrize(
    "field, value, message",
    [("only", "games", "only"), ("pref_ref_kl_coefs", "1,-0.3", "pref_ref_kl_coefs"), ("ipo_taus", "0.1,x", "ipo_taus"),
     ("ppo_ref_kl_targets", "", "ppo_ref_kl_targets")],
)
def test_bad_settings_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig(**{field: value})


def test_figures_are_drawn_from_frontier_points_and_group_histories(tmp_path):
    reviews = {
        "sft": -0.2,
        "best": 3.0,
        "points": {
            "ppo": [dict(setting="target KL 3", kl=3.1, gold=1.5)],
            "dpo": [dict(setting="β 1", kl=1.2, gold=0.8)],
        },
    }
    assert plot_frontier(reviews, tmp_path / "frontier.png").stat().st_size > 10_000
    history = [
        {"step": i, "group/accuracy": 0.3 + 0.01 * i, "rlhf/response_length": 3.5, "group/wrong_length": 3.4,
         "losses/entropy": 0.5, "group/uniform_share": 0.3}
        for i in range(5)
    ]
    arithmetic = {"sft": 0.3, **{algo: {"history": history, "accuracy": 0.34} for algo in ("grpo", "dapo", "dr_grpo")}}
    assert plot_group_methods(arithmetic, tmp_path / "groups.png").stat().st_size > 10_000

"""llm.compare: its settings are checked, and its figures are drawn from the runs' records."""

from __future__ import annotations

import pytest

from llm.compare import GROUP_PANELS, CompareConfig, plot_frontier, plot_group_methods


@pytest.mark.parametrize(
    "field, value, message",
    [("only", "games", "only"), ("pref_ref_kl_coefs", "1,-0.3", "pref_ref_kl_coefs"), ("ipo_taus", "0.1,x", "ipo_taus"),
     ("ppo_ref_kl_targets", "", "ppo_ref_kl_targets")],
)
def test_bad_settings_are_refused_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        CompareConfig(**{field: value})


@pytest.fixture
def drawn(monkeypatch):
    """The figures llm.compare saves, kept for inspection (each is still written to its file)."""
    import llm.compare

    figures = []

    class Kept(llm.compare.Figure):
        def savefig(self, *args, **kwargs):
            figures.append(self)
            return super().savefig(*args, **kwargs)

    monkeypatch.setattr(llm.compare, "Figure", Kept)
    return figures


def test_the_frontier_plots_each_run_at_its_kl_and_gold_reward(tmp_path, drawn):
    reviews = {
        "sft": -0.2,
        "best": 3.0,
        "points": {
            "ppo": [dict(setting="target KL 3", kl=3.1, gold=1.5), dict(setting="target KL 6", kl=6.2, gold=1.9)],
            "dpo": [dict(setting="β 1", kl=1.2, gold=0.8)],
        },
    }
    path = plot_frontier(reviews, tmp_path / "frontier.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (ax,) = drawn[0].axes
    points = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert points == {"SFT policy": [[0.0, -0.2]], "PPO": [[3.1, 1.5], [6.2, 1.9]], "DPO": [[1.2, 0.8]]}
    assert {t.get_text(): t.xy for t in ax.texts} == {"target KL 3": (3.1, 1.5), "target KL 6": (6.2, 1.9),
                                                      "β 1": (1.2, 0.8)}
    (best,) = [line for line in ax.lines if line.get_label() == "best reachable gold"]
    assert list(best.get_ydata()) == [3.0, 3.0]
    assert "KL" in ax.get_xlabel() and "gold" in ax.get_ylabel()


def test_the_group_figure_plots_each_metric_of_each_method_by_iteration(tmp_path, drawn):
    def history(offset: float) -> list[dict]:
        return [{"step": i, "group/accuracy": 0.3 + offset + 0.01 * i, "rlhf/response_length": 3.5 + offset,
                 "group/wrong_length": 3.4 if i != 2 else None,  # not logged at iteration 2: left out
                 "losses/entropy": 0.5 - offset, "group/uniform_share": 0.3} for i in range(5)]

    offsets = {"grpo": 0.0, "dapo": 0.1, "dr_grpo": 0.2}
    arithmetic = {"sft": 0.3, **{algo: {"history": history(o), "accuracy": 0.34} for algo, o in offsets.items()}}
    plot_group_methods(arithmetic, tmp_path / "groups.png")
    assert (tmp_path / "groups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    axes = drawn[0].axes
    assert [ax.get_title() for ax in axes] == [label for _, label in GROUP_PANELS]
    for ax, (name, _) in zip(axes, GROUP_PANELS):
        lines = {line.get_label(): line for line in ax.lines}
        for algo, offset in offsets.items():
            records = [r for r in history(offset) if r[name] is not None]
            assert list(lines[algo].get_xdata()) == [r["step"] for r in records], (name, algo)
            assert list(lines[algo].get_ydata()) == pytest.approx([r[name] for r in records]), (name, algo)
        assert ("SFT" in lines) == (name == "group/accuracy")
    sft = {line.get_label(): line for line in axes[0].lines}["SFT"]
    assert list(sft.get_ydata()) == [0.3, 0.3]

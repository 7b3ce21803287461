"""A Flappy Bird run stops when mastered: the check, when it stops, what it saves, and that it changes nothing else.

The stop logic is driven by a stub of the evaluation (`envs.mastery.evaluate_policy`): scripted
scores per check, so each case knows the step it must stop at. One tiny run plays the real
batched evaluation with the mastery threshold lowered to 0, end to end through the command line.
"""

from __future__ import annotations

import pytest
import torch

import envs.mastery
from core.checkpoint import load_checkpoint
from core.metrics import read_metrics
from envs.config import TrainConfig, parse_config, resolve
from envs.mastery import FRESH_SEED, HELD_OUT_SEED
from envs.train import main, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH = 4 * 32
# a tiny Flappy Bird run: 4 envs × 32 steps, one minibatch, checked every 2 updates (steps 256, 512, …)
TINY = dict(env_id="flappy", num_envs=4, num_steps=32, minibatch_size=BATCH, update_epochs=1, total_steps=12 * BATCH,
            mastery_check_every=2 * BATCH, progress=False, plot_every_seconds=1e9)

PASS, FAIL = [500.0] * 100, [500.0] * 94 + [3.0] * 6  # 100% and 94% at the cap


class ScriptedEvaluation:
    """Stands in for `evaluate_policy`: the held-out seeds get `held_out[k]` at the k-th check, the
    fresh seeds `fresh[j]` at the j-th confirmation (FAIL past the script's end); logs every call
    with the agent's weights at that moment."""

    def __init__(self, held_out: list, fresh: list):
        self.held_out, self.fresh, self.calls = held_out, fresh, []

    def __call__(self, agent, env_id, *, episodes, cap, seed, device, give_up_below_cap):
        assert episodes == 100 and cap == 500 and env_id == "proximal/FlappyBird-v0" and give_up_below_cap == 6
        kind = "held_out" if seed == HELD_OUT_SEED else "fresh"
        script = self.held_out if kind == "held_out" else self.fresh
        index = sum(call["kind"] == kind for call in self.calls)
        self.calls.append({"kind": kind, "seed": seed,
                           "weights": {k: v.clone() for k, v in agent.state_dict().items()}})
        return list(script[index]) if index < len(script) else list(FAIL)


def run(tmp_path, monkeypatch, held_out, fresh, **overrides):
    evaluation = ScriptedEvaluation(held_out, fresh)
    monkeypatch.setattr(envs.mastery, "evaluate_policy", evaluation)
    config = TrainConfig(**{**TINY, **overrides}, out=str(tmp_path / "run"))
    return train(config), evaluation


def saved_model(tmp_path) -> dict:
    return load_checkpoint(tmp_path / "run" / "checkpoint.pt")["state"]["model"]


def test_stops_at_the_first_check_that_passes_on_held_out_and_fresh_seeds(tmp_path, monkeypatch):
    # held-out passes at checks 2 and 4 (steps 512, 1024); the fresh seeds fail the first confirmation
    summary, evaluation = run(tmp_path, monkeypatch, held_out=[FAIL, PASS, FAIL, PASS], fresh=[FAIL, PASS])
    assert summary["global_step"] == 4 * 2 * BATCH  # the 4th check, not the 2nd (only held-out passed there)
    assert [c["kind"] for c in evaluation.calls] == ["held_out", "held_out", "fresh", "held_out", "held_out", "fresh"]
    # every confirmation on seeds no check used before
    assert [c["seed"] for c in evaluation.calls if c["kind"] == "fresh"] == [FRESH_SEED, FRESH_SEED + 100]
    assert summary["mastered"]["steps"] == 1024 and summary["mastered"]["at_cap_fresh"] == 1.0
    # the checkpoint saved is the policy that passed, bit for bit
    passed, saved = evaluation.calls[-1]["weights"], saved_model(tmp_path)
    assert passed.keys() == saved.keys() and all(torch.equal(passed[k], saved[k]) for k in passed)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["meta"]["global_step"] == 1024
    # the checks in metrics.jsonl, at their steps: held-out share every time, fresh share when it ran
    checks = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/at_cap" in r]
    assert [(r["step"], r["eval/at_cap"], r.get("eval/at_cap_fresh")) for r in checks] == [
        (256, 0.94, None), (512, 1.0, 0.94), (768, 0.94, None), (1024, 1.0, 1.0)]
    assert all(r["eval/seconds"] >= 0 for r in checks)


def test_a_check_that_gives_up_logs_its_time_but_no_share(tmp_path, monkeypatch):
    """Scores with NaN (episodes left unplayed once 6 ended below the cap): no stop, no share, no mean."""
    gave_up = [500.0] * 50 + [3.0] * 6 + [float("nan")] * 44
    summary, _ = run(tmp_path, monkeypatch, held_out=[gave_up] * 6, fresh=[PASS] * 6)
    assert summary["global_step"] == TINY["total_steps"] and summary["last_check"]["gave_up"]
    checks = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/seconds" in r]
    assert len(checks) == 6 and not any("eval/at_cap" in r or "eval/mean_score" in r for r in checks)


def test_does_not_stop_when_only_the_held_out_seeds_pass(tmp_path, monkeypatch):
    summary, evaluation = run(tmp_path, monkeypatch, held_out=[PASS] * 6, fresh=[FAIL] * 6)
    assert summary["global_step"] == TINY["total_steps"] and summary["mastered"] is None
    assert sum(c["kind"] == "fresh" for c in evaluation.calls) == 6  # confirmed at every check, never passed


def test_fresh_seeds_are_not_played_unless_the_held_out_ones_pass(tmp_path, monkeypatch):
    summary, evaluation = run(tmp_path, monkeypatch, held_out=[], fresh=[PASS] * 6)
    assert summary["global_step"] == TINY["total_steps"]  # the cap ends a run that never masters
    assert [c["kind"] for c in evaluation.calls] == ["held_out"] * 6


def test_no_stop_when_mastered_trains_all_total_steps_without_a_check(tmp_path, monkeypatch):
    summary, evaluation = run(tmp_path, monkeypatch, held_out=[PASS] * 6, fresh=[PASS] * 6,
                              stop_when_mastered=False)
    assert summary["global_step"] == TINY["total_steps"] and evaluation.calls == []
    assert not any("eval/at_cap" in r for r in read_metrics(tmp_path / "run" / "metrics.jsonl"))


def test_the_flag_is_on_for_flappy_features_only_and_refused_where_there_is_no_check(capsys):
    assert parse_config([])[0].stop_when_mastered is True
    assert parse_config(["--no-stop-when-mastered"])[0].stop_when_mastered is False
    assert resolve(TrainConfig(env_id="CartPole-v1")).stop_when_mastered is False
    assert resolve(TrainConfig(env_id="flappy-pixels")).stop_when_mastered is False
    with pytest.raises(SystemExit) as exit_info:
        main(["--env", "CartPole-v1", "--stop-when-mastered"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stop_when_mastered" in err[0] and "Traceback" not in err[0]


def test_the_check_changes_nothing_the_run_learns(tmp_path):
    """The real check (batched greedy episodes, never passing here) after every update: the weights,
    optimiser and random streams end bit for bit as with the check off."""
    small = {**TINY, "total_steps": 3 * BATCH, "mastery_check_every": BATCH}
    for name, on in (("on", True), ("off", False)):
        train(TrainConfig(**small, stop_when_mastered=on, out=str(tmp_path / name)))
    on, off = (load_checkpoint(tmp_path / name / "checkpoint.pt")["state"] for name in ("on", "off"))
    assert all(torch.equal(on["model"][k], off["model"][k]) for k in off["model"])
    assert torch.equal(on["torch_rng"], off["torch_rng"]) and torch.equal(on["shuffle_rng"], off["shuffle_rng"])
    checks = [r for r in read_metrics(tmp_path / "on" / "metrics.jsonl") if "eval/seconds" in r]
    assert len(checks) == 3 and all(r.get("eval/at_cap", 0) == 0 for r in checks)  # an untrained bird: far from it


def test_a_tiny_real_run_stops_when_a_trivial_threshold_is_reached(tmp_path, monkeypatch, capsys):
    """End to end through the command line, the real batched evaluation, mastered = 0% at the cap."""
    monkeypatch.setattr(envs.mastery, "MASTERED_SHARE", 0.0)
    out = tmp_path / "run"
    main(["--num-envs", "4", "--num-steps", "32", "--minibatch-size", "128", "--update-epochs", "1",
          "--total-steps", "1280", "--mastery-check-every", "256", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert "mastered at 256 steps" in err and "is the policy that passed" in err
    assert load_checkpoint(out / "checkpoint.pt")["meta"]["global_step"] == 256
    last = list(read_metrics(out / "metrics.jsonl"))[-1]
    assert last["step"] == 256 and "eval/at_cap" in last and "eval/at_cap_fresh" in last


def test_an_evaluation_that_gives_up_plays_the_same_episodes_until_it_stops():
    """`give_up_below_cap` = k: the episodes that ended score what the full evaluation gives them, at least k
    of them below the cap; the others are NaN; k above the number of episodes is the full evaluation."""
    import math

    from envs.checkpoints import load_agent
    from envs.evaluate import evaluate_policy

    agent, _ = load_agent("envs/agents/flappy_features.pt")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a mediocre policy: scores spread from 1 to the cap of 30
        for p in agent.actor.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))
    full = evaluate_policy(agent, "flappy", episodes=40, cap=30, seed=HELD_OUT_SEED)
    assert 5 < sum(s < 30 for s in full) < 40  # the case tests something
    part = evaluate_policy(agent, "flappy", episodes=40, cap=30, seed=HELD_OUT_SEED, give_up_below_cap=5)
    played = [i for i, s in enumerate(part) if not math.isnan(s)]
    assert 5 <= sum(part[i] < 30 for i in played) and len(played) < 40
    assert all(part[i] == full[i] for i in played)
    assert evaluate_policy(agent, "flappy", episodes=40, cap=30, seed=HELD_OUT_SEED, give_up_below_cap=41) == full
    assert envs.mastery.out_of_reach(100) == 6 and envs.mastery.out_of_reach(20) == 2  # 95% of 20 = 19


def test_a_resumed_run_checks_at_the_steps_of_an_uninterrupted_one(tmp_path, monkeypatch):
    """Stopped after 2 updates (step 256, just checked) and resumed: checks at 512, 768, … as the
    uninterrupted run (not at 384), and the same stop (held-out and fresh pass at the 4th check)."""
    evaluation = ScriptedEvaluation(held_out=[FAIL, FAIL, FAIL, PASS], fresh=[PASS])
    monkeypatch.setattr(envs.mastery, "evaluate_policy", evaluation)
    train(TrainConfig(**TINY, out=str(tmp_path / "run")), stop_after_iterations=2)
    assert len(evaluation.calls) == 1  # the check at 256
    config, _ = parse_config(["--resume", str(tmp_path / "run")])
    resumed = train(config, resume=load_checkpoint(tmp_path / "run" / "checkpoint.pt"))
    checks = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "eval/seconds" in r]
    assert checks == [256, 512, 768, 1024] and resumed["global_step"] == 1024


def test_the_benchmarks_check_gives_up_only_once_solved(monkeypatch):
    """`give_up_once_solved`: the checks before the first solved one play all 100 episodes (the
    solved time needs the full mean); every check after it stops at 6 below the cap."""
    unsolved, solved = [30.0] * 100, [500.0] * 90 + [60.0] * 10  # mean 30; mean 456, all past 40, 90% at the cap
    script, asked = [unsolved, unsolved, solved, solved, solved], []

    def scripted(agent, env_id, *, episodes, cap, seed, device, give_up_below_cap):
        asked.append(give_up_below_cap)
        return list(script[len(asked) - 1])

    monkeypatch.setattr(envs.mastery, "evaluate_policy", scripted)
    check = envs.mastery.flappy_check(every=10, log=False, give_up_once_solved=6)
    agent = torch.nn.Linear(1, 1)
    for step in range(10, 60, 10):
        assert check(agent, step) is False  # never mastered: 90% at the cap
    assert check.solved_at is not None and check.solved_at[1] == 30
    assert asked == [None, None, None, 6, 6]

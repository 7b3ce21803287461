"""`python -m envs.bench_train`'s Stable-Baselines3 side on our Flappy Bird (SB3 is the optional
`bench` extra: those tests are skipped without it), its ratio and its flags."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from envs import bench_train
from envs.bench_train import FLAPPY_ID, SB3Greedy, sb3_ratio


def _sb3_model(n_envs: int = 2, seed: int = 0):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    import envs  # noqa: F401  (registers proximal/FlappyBird-v0)

    env = make_vec_env(FLAPPY_ID, n_envs=n_envs, seed=seed)
    return PPO("MlpPolicy", env, **bench_train.SB3_FLAPPY, seed=seed, device="cpu", verbose=0)


def test_sb3_greedy_gives_the_actions_of_predict_deterministic():
    model = _sb3_model()
    with torch.no_grad():  # sharpen the fresh policy's logits so that both actions occur
        model.policy.action_net.weight.mul_(300.0)
    obs = np.random.default_rng(0).uniform(-1, 1, size=(64, 12)).astype(np.float32)
    expected, _ = model.predict(obs, deterministic=True)
    actions = SB3Greedy(model.policy).greedy_action(torch.as_tensor(obs))
    assert actions.shape == (64,) and actions.tolist() == expected.tolist()
    assert len(set(expected.tolist())) == 2, "the check should see both actions"


def test_sb3_greedy_is_judged_by_our_batched_evaluation():
    from envs.evaluate import evaluate_policy

    model = _sb3_model()
    scores = evaluate_policy(SB3Greedy(model.policy), FLAPPY_ID, episodes=4, cap=3, seed=10_000)
    assert len(scores) == 4 and all(0 <= s <= 3 for s in scores)


def test_sb3_flappy_run_stops_at_its_budget():
    pytest.importorskip("stable_baselines3")
    result = bench_train.bench_flappy_sb3(seed=1, budget=0.5, every=10**9)
    assert result["seconds_to_solved"] is None and result["budget_seconds"] == 0.5
    assert result["trained_steps"] > 0 and 0.5 <= result["trained_seconds"] < 5
    assert result["evaluations"] == 0


def test_sb3_flappy_run_evaluates_every_fixed_number_of_steps(monkeypatch):
    """After each update whose step count reaches the next multiple of `every` (here every update of
    8 envs × 64 steps, shortened from 1 024 to keep the test fast): the first rollout's start is not one."""
    pytest.importorskip("stable_baselines3")
    monkeypatch.setitem(bench_train.SB3_FLAPPY, "n_steps", 64)
    result = bench_train.bench_flappy_sb3(seed=1, budget=1e9, every=512, max_steps=3 * 512)
    assert result["evaluations"] == 2 and result["trained_steps"] == 3 * 512
    assert result["best_mean"] is not None and result["seconds_to_solved"] is None


def test_ratio_and_target():
    ours = {"seconds_to_solved": 30.0}
    assert sb3_ratio(ours, {"seconds_to_solved": 600.0, "budget_seconds": 900}) == {
        "ratio": 0.05, "ratio_below": None, "target_met": True}
    assert sb3_ratio(ours, {"seconds_to_solved": 100.0, "budget_seconds": 900})["target_met"] is False
    unsolved = sb3_ratio(ours, {"seconds_to_solved": None, "budget_seconds": 300})
    assert unsolved == {"ratio": None, "ratio_below": 0.1, "target_met": True}
    assert sb3_ratio({"seconds_to_solved": None}, {"seconds_to_solved": None, "budget_seconds": 300})[
        "target_met"] is False
    assert sb3_ratio(None, {"seconds_to_solved": None, "budget_seconds": 300})["target_met"] is None


def _fake_runs(monkeypatch, calls: list) -> None:
    """Replace each training run of bench_train by a recorded call returning known times, so that
    main's bookkeeping (skips, ratios, medians) is checked by hand, without training."""
    flappy = {"seconds_to_solved": 30.0, "steps_to_solved": 900_000, "seconds_to_mastered": 400.0,
              "steps_to_mastered": 8_000_000, "final_at_cap_fresh_seeds": 0.95,
              "update_flops_per_step": 250_000, "steps_per_second": 40_000}
    sb3 = {"seconds_to_solved": None, "steps_to_solved": None, "budget_seconds": None, "trained_steps": 600_000,
           "trained_seconds": 300.0, "steps_per_second": 2_000, "best_mean": 81.0, "evaluations": 7}
    ours_seconds = {1: 2.5, 2: 1.0, 3: 9.0}  # CartPole seconds to solved by seed: median 2.5 (seed 1)
    sb3_seconds = {1: 10.0, 2: None, 3: 8.0}  # unsolved counts as slowest: median 10.0 (seed 1)
    monkeypatch.setattr(bench_train, "warm_up", lambda: None)
    monkeypatch.setattr(bench_train, "matmul_gflops", lambda: 50.0)  # the machine's bound, by hand below
    monkeypatch.setattr(bench_train, "bench_flappy", lambda seed: calls.append(("flappy", seed)) or dict(flappy))
    monkeypatch.setattr(bench_train, "bench_flappy_sb3", lambda seed, budget, every: calls.append(
        ("flappy-sb3", seed, budget, every)) or {**sb3, "budget_seconds": budget})
    monkeypatch.setattr(bench_train, "bench_cartpole_ours", lambda seed: calls.append(("ours", seed)) or {
        "seconds": ours_seconds[seed], "steps": 1000 * seed})
    monkeypatch.setattr(bench_train, "bench_cartpole_sb3", lambda seed: calls.append(("sb3", seed)) or {
        "seconds": sb3_seconds[seed], "steps": 2000 * seed})


def test_main_ratios_and_medians_by_hand(capsys, monkeypatch):
    calls: list = []
    _fake_runs(monkeypatch, calls)
    result = bench_train.main(["--sb3-budget", "300", "--sb3-every", "512", "--cartpole-seeds", "3"])
    # ours first, then SB3 with its budget; CartPole's seeds alternate between the two
    assert calls == [("flappy", 1), ("flappy-sb3", 1, 300.0, 512),
                     ("ours", 1), ("sb3", 1), ("ours", 2), ("sb3", 2), ("ours", 3), ("sb3", 3)]
    # SB3 unsolved within 300 s: ours/SB3 is below 30/300 = 0.1, and the target is met
    assert result["flappy_sb3"]["ratio"] is None and result["flappy_sb3"]["ratio_below"] == 0.1
    assert result["flappy_sb3"]["target_met"] is True and result["flappy_sb3"]["budget_seconds"] == 300.0
    assert result["cartpole"] == {"ours_seconds": 2.5, "ours_steps": 1000, "sb3_seconds": 10.0, "sb3_steps": 2000,
                                  "ratio": 0.25, "seeds": 3}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["cartpole"]["ratio"] == 0.25


def test_a_zero_budget_skips_sb3(capsys, monkeypatch):
    calls: list = []
    _fake_runs(monkeypatch, calls)
    result = bench_train.main(["--only", "flappy", "flappy-sb3", "--sb3-budget", "0"])
    assert calls == [("flappy", 1)], "a zero budget trains no SB3"
    assert result["flappy_sb3"] is None and result["cartpole"] is None
    assert result["flappy"]["seconds_to_solved"] == 30.0
    # 50 GFLOP/s over 250 000 FLOP a step: a bound of 200 000 steps/s, of which 40 000 is 0.2
    assert result["flappy"]["bound_steps_per_second"] == 200_000 and result["flappy"]["fraction_of_bound"] == 0.2
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["flappy_sb3"] is None


@pytest.mark.parametrize("argv", [["--sb3-budget", "-1"], ["--sb3-every", "0"], ["--only", "puffer-x"],
                                  ["--cartpole-seeds", "0"]])
def test_bad_flags_are_refused(argv):
    with pytest.raises(SystemExit) as exit_info:
        bench_train.main(argv)
    assert exit_info.value.code == 2


def test_ours_and_sb3_are_checked_at_the_same_step_counts():
    """Ours is checked every 10 updates of the flappy preset, SB3 every FLAPPY_EVAL_EVERY steps: both
    batches must be the same 8 192 steps, or the two runs are judged at different points."""
    from envs.config import TrainConfig, resolve

    ours = resolve(TrainConfig(out="unused"))
    sb3_batch = bench_train.SB3_FLAPPY_ENVS * bench_train.SB3_FLAPPY["n_steps"]
    assert ours.batch_size * 10 == bench_train.FLAPPY_EVAL_EVERY == sb3_batch * 10


@pytest.mark.parametrize("arch", ["mlp", "mlp_shared"])
def test_update_flops_per_step_counts_what_torch_counts(arch):
    """The count from the shapes against torch's own FLOP counter over a rollout's forward pass and
    K epochs of forward and backward (the observation needs no gradient); the preset by hand too."""
    from torch.utils.flop_counter import FlopCounterMode

    from envs.networks import ARCHITECTURES, ActorCritic

    assert arch in ARCHITECTURES
    agent, rows, epochs = ActorCritic((12,), 2, arch=arch), 256, 4
    obs = torch.randn(rows, 12)
    with FlopCounterMode(display=False) as counter:
        agent.act(obs)
        for _ in range(epochs):
            logits, value = agent(obs)
            (logits.sum() + value.sum()).backward()
    assert bench_train.update_flops_per_step(agent, epochs) == counter.get_total_flops() / rows
    if arch == "mlp":  # 12 → 64 → 64 → {2, 1}: forward 2·(768 + 4096 + 128) + 2·(768 + 4096 + 64) = 19 840
        assert bench_train.update_flops_per_step(agent, epochs) == 19_840 + 4 * (3 * 19_840 - 2 * 2 * 768)


def test_matmul_gflops_is_the_products_count_over_their_time():
    """A positive rate, within what one core can do (under 1 000 GFLOP/s), from a short measurement."""
    rate = bench_train.matmul_gflops(seconds=0.02, repeats=2)
    assert 0.1 < rate < 1000

"""`python -m envs.bench_suite`: its statistics (by hand), the unseen tasks it reaches as
`module:EnvId` (skipped without the `bench` extra), and a short run of each implementation."""

from __future__ import annotations

import math
import statistics

import pytest

from envs import bench_suite
from envs.bench_suite import entropy_kept, final_return, mean_std

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _row(returns_mean, episodes, entropy=0.5):
    row = {"losses/entropy": entropy}
    if episodes:
        row.update({"charts/episodic_return": returns_mean, "charts/episodes": float(episodes)})
    return row


def test_final_return_weights_updates_by_their_episodes_from_the_end():
    # the last 100 episodes: 60 at 10.0 and 50 at 4.0 (the update that crosses 100 is taken whole)
    history = [_row(-5.0, 30), _row(4.0, 50), _row(0.0, 0), _row(10.0, 60)]
    assert final_return(history) == pytest.approx((60 * 10.0 + 50 * 4.0) / 110)
    assert final_return(history, episodes=10) == pytest.approx(10.0)
    assert final_return(history, episodes=1000) == pytest.approx((30 * -5.0 + 50 * 4.0 + 60 * 10.0) / 140)
    assert math.isnan(final_return([_row(0.0, 0)]))


def test_entropy_kept_is_the_early_minimum_over_log_actions():
    history = [_row(0.0, 0, e) for e in (0.69, 0.30, 0.50)] + [_row(0.0, 0, 0.01)] * 27  # 30 updates
    assert entropy_kept(history, n_actions=2) == pytest.approx(0.30 / math.log(2))  # the first 3 updates only
    assert entropy_kept(history, n_actions=2, early=1.0) == pytest.approx(0.01 / math.log(2))


def test_a_collapse_is_low_early_entropy_and_then_a_stuck_policy():
    late = [dict(_row(0.0, 0, 0.1), **{"losses/approx_kl": kl}) for kl in (1e-2, 3e-5, 2e-5, 1e-5)]
    history = [_row(0.0, 0, 0.6), *late]
    history[0]["losses/approx_kl"] = 0.5  # the first 10% (one update here) is left out of the median
    assert bench_suite.late_kl(history) == pytest.approx(2.5e-5)  # the median of the last four
    assert bench_suite.collapsed(0.2, 5e-5) and not bench_suite.collapsed(0.2, 1e-3)
    assert not bench_suite.collapsed(0.3, 5e-5)


def test_mean_std_is_the_population_statistic():
    values = [488.0, 470.5, 500.0]
    assert mean_std(values) == pytest.approx((statistics.fmean(values), statistics.pstdev(values)))


def test_summary_passes_on_the_bar_or_on_sb3_and_fails_a_collapse():
    tasks = (bench_suite.Task("A-v0", 10, bar=5.0), bench_suite.Task("B-v0", 10),
             bench_suite.Task("C-v0", 10, bar=-200.0, bar_statistic="greedy"))
    results = {("ours", "A-v0", 1): {"return": 6.0, "seconds": 1.0},
               ("sb3", "A-v0", 1): {"return": 9.0, "seconds": 1.0},
               ("ours", "B-v0", 1): {"return": 3.0, "seconds": 1.0, "entropy_kept": 0.1, "late_kl": 5e-5},
               ("sb3", "B-v0", 1): {"return": 2.0, "seconds": 1.0},
               ("ours", "C-v0", 1): {"return": -300.0, "greedy": -150.0, "seconds": 1.0},
               ("sb3", "C-v0", 1): {"return": -100.0, "greedy": -900.0, "seconds": 1.0}}
    summary = bench_suite.summarise(tasks, [1], results, with_sb3=True)
    assert summary["A-v0"]["passed"] is True  # its own bar, though below SB3
    assert summary["B-v0"]["bar"] == 2.0 and summary["B-v0"]["ours"]["collapsed"] is True
    assert summary["B-v0"]["passed"] is False  # above SB3 but collapsed
    assert summary["B-v0"]["ours"]["late_kl"] == [5e-5]
    assert summary["C-v0"]["passed"] is True and summary["C-v0"]["ours"]["greedy_mean"] == -150.0  # greedy bar


def test_unseen_tasks_are_reached_as_module_ids():
    pytest.importorskip("flappy_bird_gymnasium")
    pytest.importorskip("minigrid")
    import gymnasium as gym

    from envs.vector import env_spaces

    obs, act = env_spaces("envs.unseen_tasks:FlappyBirdFeatures-v0")
    assert obs.shape == (12,) and obs.dtype == "float64" and act == gym.spaces.Discrete(2)
    obs, act = env_spaces("envs.unseen_tasks:DoorKey5x5Flat-v0")
    assert obs.shape == (147,) and act == gym.spaces.Discrete(7)


def test_a_short_run_of_ours_reports_a_return_and_the_entropy_kept():
    result = bench_suite.run_ours("CartPole-v1", 4096, seed=1)
    assert 8 <= result["return"] <= 500  # CartPole's returns: at least 8 steps, at most 500
    assert 8 <= result["greedy"] <= 500
    assert 0.5 < result["entropy_kept"] <= 1.0 + 1e-6  # 2 updates cannot make a 2-action policy deterministic
    assert result["late_kl"] > 0


def test_a_short_run_of_sb3_reports_the_return_of_its_monitor():
    pytest.importorskip("stable_baselines3")
    result = bench_suite.run_sb3("CartPole-v1", 2048, seed=1)
    assert 8 <= result["return"] <= 500 and 8 <= result["greedy"] <= 500


def test_unknown_task_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_suite.main(["--tasks", "Nope-v0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code != 0 and len(err) == 1 and "--tasks" in err[0] and "CartPole-v1" in err[0]


def _metrics_row(step, entropy, kl, grad_norm=None, ev=0.5):
    row = {"step": step, "losses/entropy": entropy, "losses/approx_kl": kl, "losses/clipfrac": 0.0,
           "losses/explained_variance": ev}
    if grad_norm is not None:
        row["losses/grad_norm"] = grad_norm
    return row


def test_diagnose_names_a_collapse_only_when_the_low_entropy_policy_also_stops_moving():
    from envs.diagnose import symptoms

    low_then_stuck = [_metrics_row(i, 0.1, 5e-5) for i in range(20)]
    found = symptoms(low_then_stuck, n_actions=2, max_grad_norm=0.5)
    assert any(s.startswith("entropy collapse") for s in found)
    assert any(s.startswith("a policy that hardly moves") for s in found)
    low_but_moving = [_metrics_row(i, 0.1, 2e-3) for i in range(20)]
    assert symptoms(low_but_moving, n_actions=2, max_grad_norm=0.5) == []
    # the clip: median early ‖g‖ 5 against max_grad_norm 0.5 → factor 0.1; a critic worse than a constant
    clipped = [_metrics_row(i, 0.6, 2e-3, grad_norm=5.0, ev=-0.3) for i in range(20)]
    found = symptoms(clipped, n_actions=2, max_grad_norm=0.5)
    assert [s.split(":")[0] for s in found] == ["binding clip", "a critic that explains nothing"]
    assert "factor 0.10" in found[0]


def test_diagnose_answers_a_folder_without_a_run_in_one_line(tmp_path, capsys):
    from envs import diagnose

    with pytest.raises(SystemExit) as exc:
        diagnose.main([str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "metrics.jsonl" in err[0]

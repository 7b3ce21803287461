"""Data-parallel training (core.distributed) with 2 gloo processes on the CPU.

- The gradient every rank applies equals the one a single process computes on the two ranks'
  batches together, for the game update (`core.ppo.ppo_update`) and for DPO on a tiny GPT; the
  reference is computed here, by hand, on the whole batch.
- `torchrun --nproc_per_node=2` runs of `envs.train` and `llm.pipeline` finish with one set of
  outputs, and a stopped 2-rank game run resumes to the same weights as an uninterrupted one
  (so every rank's envs and random streams came back).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from core import distributed
from core.checkpoint import load_checkpoint
from core.ppo import Evaluation, PPOConfig, ppo_update

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, *args) -> None:
    """Run `worker(rank, out_dir, *args)` in 2 processes joined by `distributed.setup`."""
    port = _free_port()
    mp.spawn(_entry, args=(port, worker, args), nprocs=WORLD, join=True)


def _entry(rank: int, port: int, worker, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.setup("cpu")
    try:
        worker(rank, *args)
    finally:
        distributed.cleanup()


# ---- the game update: ppo_update with a tiny actor-critic --------------------------------------

def _actor_critic() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"pi": torch.nn.Linear(3, 2), "v": torch.nn.Linear(3, 1)})


def _game_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = 16
    return {
        "obs": torch.randn(n, 3, generator=g),
        "actions": torch.randint(0, 2, (n,), generator=g),
        "logprobs": -torch.rand(n, generator=g) - 0.3,
        "advantages": torch.randn(n, generator=g),
        "returns": torch.randn(n, generator=g),
        "values": torch.randn(n, generator=g),
    }


def _evaluate(net):
    def evaluate(mb):
        dist = torch.distributions.Categorical(logits=net["pi"](mb["obs"]))
        return Evaluation(dist.log_prob(mb["actions"]), dist.entropy(), net["v"](mb["obs"]).squeeze(-1))
    return evaluate


# One minibatch per rank (its half), no advantage normalisation (a per-rank statistic), and a
# grad-norm clip small enough to bind: clipping before the average would give another step.
GAME_CONFIG = dict(update_epochs=1, minibatch_size=8, norm_adv=False, clip_coef=0.2, vf_coef=0.5, ent_coef=0.01,
                   max_grad_norm=0.05, clip_vloss=False)


def _game_worker(rank: int, out: str) -> None:
    net = _actor_critic()
    batch = {k: v[rank::WORLD] for k, v in _game_batch().items()}  # this rank's half
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)  # the step is −(the applied gradient)
    before = [p.detach().clone() for p in net.parameters()]
    stats = ppo_update(_evaluate(net), batch, optimizer, PPOConfig(**GAME_CONFIG), generator=torch.Generator(),
                       ranks=distributed.ranks())
    applied = [b - p.detach() for b, p in zip(before, net.parameters())]
    torch.save({"applied": applied, "stats": stats}, Path(out) / f"game-{rank}.pt")


def test_game_update_applies_the_gradient_of_the_whole_batch(tmp_path):
    _spawn(_game_worker, str(tmp_path))
    # the reference: one process, the whole batch, the clipped surrogate written out (CL-1, CL-4)
    net, batch = _actor_critic(), _game_batch()
    dist = torch.distributions.Categorical(logits=net["pi"](batch["obs"]))
    ratio = torch.exp(dist.log_prob(batch["actions"]) - batch["logprobs"])
    adv = batch["advantages"]
    policy_loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    value_loss = 0.5 * ((net["v"](batch["obs"]).squeeze(-1) - batch["returns"]) ** 2).mean()  # ½(V − V^targ)², CL-4
    loss = policy_loss + 0.5 * value_loss - 0.01 * dist.entropy().mean()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    assert norm > 0.05  # the clip binds, so its place (after the average) matters
    expected = [g * 0.05 / (norm + 1e-6) for g in grads]
    results = [torch.load(tmp_path / f"game-{r}.pt") for r in range(WORLD)]
    for result in results:
        for got, want in zip(result["applied"], expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert results[0]["stats"] == results[1]["stats"]  # rank-averaged: the same figures on both ranks
    torch.testing.assert_close(torch.tensor(results[0]["stats"]["losses/policy_loss"]), policy_loss.detach(),
                               rtol=1e-4, atol=1e-6)


# ---- leaving the group: no gloo thread outlives it ----------------------------------------------

def _native_threads() -> list[str]:
    """The names of this process's threads, C++ ones included (Linux: /proc/self/task/*/comm)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # a thread that ended meanwhile
            pass
    return names


def _leave_worker(rank: int, out: str) -> None:
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    distributed.average_gradients(net.parameters())  # an all-reduce: gloo's threads are running
    optimizer.step()  # the first step of an optimiser imports torch._dynamo, after the group was joined
    during = _native_threads()
    distributed.cleanup()
    Path(out, f"threads-{rank}.json").write_text(json.dumps({"during": during, "after": _native_threads()}))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from /proc")
def test_leaving_the_group_ends_gloos_threads(tmp_path):
    # gloo threads alive at the interpreter's exit made a rank abort now and then (SIGABRT, "terminate
    # called without an active exception"): torch._dynamo, imported after the group was joined, kept it alive
    _spawn(_leave_worker, str(tmp_path))
    for rank in range(WORLD):
        threads = json.loads((tmp_path / f"threads-{rank}.json").read_text())
        assert "gloo_tcp_loop" in threads["during"] and "pt_gloo_runloop" in threads["during"]  # names as read
        assert not [name for name in threads["after"] if "gloo" in name], threads["after"]


# torchrun's report of the failure (abridged): rank 1 aborted at its exit, torchrun then ended rank 0
ABORTED_RUN = """env CartPole-v1 · 8 envs × 128 steps = batch 1024 per process × 2 processes · 8 updates · mlp · cpu
terminate called without an active exception
W1207 02:29:06.524000 3418 api.py:1028] Sending process 3422 closing signal SIGTERM
E1207 02:29:06.556000 3418 api.py:1002] failed (exitcode: -6) local_rank: 1 (pid: 3423) of binary: python
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Failures:
[1]:
  time      : 2026-12-07_02:29:06
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 3422)  (SIGTERM)
Root Cause (first observed failure):
[0]:
  time      : 2026-12-07_02:29:06
  rank      : 1 (local_rank: 1)
  exitcode  : -6 (pid: 3423)  (SIGABRT)
"""


def test_stress_check_names_the_rank_that_died_and_what_it_said():
    from envs.bench_dist import describe_failure

    assert describe_failure(ABORTED_RUN, 1) == ("rank 0: SIGTERM; rank 1: SIGABRT; "
                                                "terminate called without an active exception")
    raised = ("[rank1]: RuntimeError: Connection closed by peer\n"
              "  rank      : 1 (local_rank: 1)\n  exitcode  : 1 (pid: 7)\n")
    assert describe_failure(raised, 1) == "rank 1: exit status 1; [rank1]: RuntimeError: Connection closed by peer"


# ---- an LLM stage: DPO on a tiny GPT ------------------------------------------------------------

def _tiny_gpt():
    from llm.gpt import GPT, GPTConfig
    from llm.tokenizer import CharTokenizer

    tok = CharTokenizer()
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=48, n_layer=1, n_head=2, n_embd=16,
                         dropout=0.0)), tok


PAIRS = [("review: the plot was", " good.", " bad."), ("review: the film was", " fine.", " dull and slow."),
         ("review: it was", " great fun.", " awful."), ("review: the cast was", " superb.", " weak.")]


def _dpo_loss(model, tok, pairs):
    from core.preference import dpo_loss
    from llm.preference import sequence_logps

    prompts = [p for p, _, _ in pairs]
    both = sequence_logps(model, tok, prompts * 2, [c for _, c, _ in pairs] + [r for _, _, r in pairs], "cpu")
    ref = both.detach() - 0.1  # a fixed reference: any numbers serve for a gradient check
    n = len(pairs)
    return dpo_loss(both[:n], both[n:], ref[:n], ref[n:] + 0.2, 1.0).mean()


def _dpo_worker(rank: int, out: str) -> None:
    model, tok = _tiny_gpt()
    loss = _dpo_loss(model, tok, PAIRS[rank::WORLD])  # this rank's pairs
    loss.backward()
    distributed.average_gradients(model.parameters())
    torch.save([p.grad for p in model.parameters()], Path(out) / f"dpo-{rank}.pt")


def test_dpo_gradient_over_two_ranks_is_the_whole_batch_gradient(tmp_path):
    _spawn(_dpo_worker, str(tmp_path))
    model, tok = _tiny_gpt()
    expected = torch.autograd.grad(_dpo_loss(model, tok, PAIRS), list(model.parameters()))
    for rank in range(WORLD):
        for got, want in zip(torch.load(tmp_path / f"dpo-{rank}.pt"), expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


# ---- torchrun runs of both front ends ----------------------------------------------------------

def _torchrun(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={WORLD}", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


GAME = ["-m", "envs.train", "--env", "flappy", "--num-envs", "4", "--num-steps", "16", "--minibatch-size", "32",
        "--total-steps", "512", "--no-anneal-lr", "--checkpoint-every", "100", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run: 512 steps over 2 ranks × 4 envs × 16 steps, 4 updates of 128 steps."""
    out = tmp_path_factory.mktemp("dist") / "full"
    _torchrun(*GAME, "--out", str(out))
    return out


def test_game_agent_under_torchrun_writes_one_set_of_outputs(full_run):
    names = {p.name for p in full_run.iterdir()}  # one set of outputs (the plot once an episode has ended)
    assert {"checkpoint.pt", "config.json", "metrics.jsonl"} <= names <= {"checkpoint.pt", "config.json",
                                                                          "metrics.jsonl", "learning_curve.png"}
    records = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [128, 256, 384, 512]  # one file: every rank's steps, logged once
    saved = load_checkpoint(full_run / "checkpoint.pt")
    assert saved["meta"]["world_size"] == 2 and len(saved["state"]["other_ranks"]) == 1
    # the two ranks' games differ (own seeds), and both were saved
    assert not torch.equal(saved["state"]["obs"], saved["state"]["other_ranks"][0]["obs"])
    assert "env" in saved["state"]["other_ranks"][0]


def test_game_agent_under_torchrun_resumes_to_the_uninterrupted_weights(full_run, tmp_path):
    # stop after 2 updates (total_steps 256; a constant learning rate, so the schedule is the same), resume to 512
    _torchrun(*[a if a != "512" else "256" for a in GAME], "--out", str(tmp_path / "part"))
    _torchrun("-m", "envs.train", "--resume", str(tmp_path / "part"), "--total-steps", "512", "--no-progress")
    saved = load_checkpoint(full_run / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert resumed["meta"]["global_step"] == 512
    for name, tensor in saved["state"]["model"].items():  # rank 1's envs came back too, or its rollouts differ
        assert torch.equal(tensor, resumed["state"]["model"][name]), name
    for own_saved, own_resumed in ((saved["state"], resumed["state"]),
                                   (saved["state"]["other_ranks"][0], resumed["state"]["other_ranks"][0])):
        assert torch.equal(own_saved["obs"], own_resumed["obs"])
        assert torch.equal(own_saved["shuffle_rng"], own_resumed["shuffle_rng"])


def test_game_checkpoint_of_two_ranks_refuses_one_process(tmp_path):
    from envs.checkpoints import restore_training_state

    payload = {"meta": {"world_size": 2, "iteration": 1}, "state": {}}
    with pytest.raises(ValueError, match="nproc_per_node=2"):
        restore_training_state(payload, None, None, None, None, None, 1, torch.device("cpu"))


def test_llm_pipeline_under_torchrun_writes_one_set_of_outputs(tmp_path):
    result = _torchrun("-m", "llm.pipeline", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--sft-steps", "12",
                       "--sft-batch-size", "8", "--sft-examples", "200", "--rm-steps", "4", "--rm-batch-size", "8",
                       "--rm-pairs", "64", "--rm-eval-pairs", "16", "--ppo-iterations", "2",
                       "--rollout-batch-size", "8", "--minibatch-size", "4", "--update-epochs", "1",
                       "--eval-prompts", "8", "--no-progress", "--device", "cpu", "--out", str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "metrics.jsonl", "ppo.png", "ppo.pt",
                                                          "report.md", "rm.pt", "sft.pt"]
    summaries = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # rank 0 alone prints the summary
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "rlhf/score" in r] == [0, 1]  # each PPO iteration logged once

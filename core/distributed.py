"""Data-parallel training with `torch.distributed`: what both front ends need, and no more.

The field's convention, as in CleanRL's `ppo_atari_multigpu.py`: `torchrun` starts N copies of
the same script and sets `RANK`, `WORLD_SIZE`, `LOCAL_RANK` (and the rendezvous address) in each
one's environment; every copy (a *rank*) keeps its own environments or its own share of the
prompts, computes the gradient of its own minibatch, and one all-reduce averages the gradients
before every optimiser step, so every rank applies the same step and the weights stay equal.

    torchrun --standalone --nproc_per_node=2 -m envs.train        # two processes on one machine

What each rank does here:
- `setup(device)` joins the process group from torchrun's environment: gloo for the CPU, NCCL
  for GPUs (rank r on `cuda:LOCAL_RANK`). Without torchrun (no `WORLD_SIZE`, or 1) nothing is
  joined and every helper below is a no-op, so a plain `python -m …` run is unchanged.
- `average_gradients(params)` after `backward()` and before the grad-norm clip: one flattened
  all-reduce of every gradient (CleanRL's batched all-reduce), divided by N. The clip then sees
  the gradient one process would compute on the N minibatches together.
- `mean_over_ranks(stats)`, `sum_over_ranks(tensor)`: the figures logged are over all ranks;
  decisions taken from them (early stop at a target KL, a β controller) are then the same on
  every rank, which they must be: a rank that stops early would leave the others waiting in
  an all-reduce forever.
- `ranks()`: the two of these that `core.ppo.ppo_update` needs (`average_gradients`, `mean`),
  as the object its `ranks` argument takes; the PPO math itself imports no process group.
- `is_main()`: only rank 0 writes metrics, plots, config.json and checkpoints.
- `rank_seed(seed, stride)`: rank r draws its own random streams from `seed + r·stride`
  (stride 1 for a generator, num_envs for N seeded envs so that no two envs share a seed);
  rank 0 keeps `seed`, so one process is the run it always was.
- `broadcast_parameters(module)`: every rank starts from rank 0's weights.
- `cleanup()`: `destroy_process_group` at the end, which ends gloo's threads, so no rank exits
  with them running (`setup` says why torch._dynamo is imported before the group is joined).

Every rank must make the same collective calls in the same order (the same number of
minibatches, epochs and updates); the front ends keep their loops in lockstep for that.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist

from core.device import resolve_device

__all__ = [
    "setup",
    "cleanup",
    "rank",
    "world_size",
    "is_main",
    "rank_seed",
    "share",
    "average_gradients",
    "mean_over_ranks",
    "sum_over_ranks",
    "any_rank",
    "min_over_ranks",
    "broadcast_parameters",
    "broadcast_object",
    "gather_objects",
    "barrier",
    "ranks",
]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def setup(device: str | torch.device = "auto") -> torch.device:
    """Join torchrun's process group (if there is one) and return this rank's device.

    Reads `WORLD_SIZE`, `RANK`, `LOCAL_RANK` (and `MASTER_ADDR`/`MASTER_PORT`, through the
    `env://` init method) as torchrun sets them. The backend follows the device: NCCL for CUDA,
    with rank r pinned to `cuda:LOCAL_RANK` (one GPU per process), gloo for the CPU. With no
    `WORLD_SIZE` (or 1) this only resolves the device.
    """
    resolved = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 1:
        raise ValueError(f"WORLD_SIZE must be ≥ 1, got {world}")
    if world == 1 or (dist.is_available() and dist.is_initialized()):
        if _active() and resolved.type == "cuda":
            resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return resolved
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this build of torch has no torch.distributed")
    if "RANK" not in os.environ:
        raise ValueError("WORLD_SIZE > 1 without RANK: start the processes with torchrun")
    # torch._dynamo (imported by the first optimiser step, if not before) takes references to the
    # process groups that exist when it is imported and never drops them; destroy_process_group then
    # leaves gloo's threads running into the interpreter's exit, where a rank aborts now and then
    # ("terminate called without an active exception", SIGABRT). Imported before the group exists,
    # it holds none, and `cleanup` ends the threads.
    importlib.import_module("torch._dynamo")
    if resolved.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) visible; "
                             "use --nproc_per_node ≤ the number of GPUs")
        resolved = torch.device("cuda", local_rank)
        torch.cuda.set_device(resolved)
        dist.init_process_group("nccl", device_id=resolved)
    else:
        dist.init_process_group("gloo")
    return resolved


def cleanup() -> None:
    """Leave the process group (a no-op with one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank, 0 with one process."""
    return dist.get_rank() if _active() else 0


def world_size() -> int:
    """The number of processes N, 1 without torchrun."""
    return dist.get_world_size() if _active() else 1


def is_main() -> bool:
    """True on rank 0, the one rank that writes files and prints progress."""
    return rank() == 0


def rank_seed(seed: int, stride: int = 1) -> int:
    """`seed + rank·stride`: rank r's seed. Rank 0 keeps `seed`, so a single process is unchanged."""
    return seed + rank() * stride


def share(total: int, name: str) -> int:
    """`total / N`, this rank's share of a batch given for the whole run; `name` is the field
    named when `total` does not split evenly over the N processes."""
    n = world_size()
    if total % n:
        raise ValueError(f"{name} ({total}) must be divisible by the number of processes ({n})")
    return total // n


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace every `.grad` by its mean over the ranks: one flattened all-reduce.

    Call after `backward()` and before the grad-norm clip. Every rank must hold gradients for
    the same parameters (the same graph); parameters without one are skipped, as in CleanRL.
    """
    if not _active():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over the ranks (a new tensor; `tensor` itself without torchrun)."""
    if not _active():
        return tensor
    total = tensor.detach().to(_collective_device(), copy=True)  # NCCL reduces CUDA tensors only
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.to(tensor.device)


def mean_over_ranks(stats: dict[str, float]) -> dict[str, float]:
    """The mean over the ranks of each value, by one all-reduce. Every rank must pass the same keys
    (they are sorted, so the order does not matter); NaN on any rank gives NaN."""
    if not _active():
        return stats
    keys = sorted(stats)
    values = torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    means = dict(zip(keys, (v / dist.get_world_size() for v in values.tolist())))
    return {k: means[k] for k in stats}  # the caller's order


class ProcessGroupRanks:
    """The ranks of torchrun's process group, as `core.ppo.Ranks`: what `ppo_update` asks of them."""

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        average_gradients(params)

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        return mean_over_ranks(stats)


def ranks() -> ProcessGroupRanks:
    """The `ranks` argument of `core.ppo.ppo_update` under torchrun (its methods are no-ops without it)."""
    return ProcessGroupRanks()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any: a stop decision taken by all ranks together."""
    if not _active():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def min_over_ranks(value: int) -> int:
    """The smallest `value` of any rank, on every rank (e.g. the rows every rank can train on)."""
    if not _active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's `module` (same starting weights)."""
    if not _active():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` (any picklable value) on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere); `[obj]` with one process.
    Move tensors to the CPU first: they travel pickled."""
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size() if is_main() else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    if _active():
        dist.barrier()


def _collective_device() -> torch.device:
    """Where small tensors of a collective live: NCCL only reduces CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")

"""Bodies of spawned test processes (a module of its own: spawned children import it by name)."""

import datetime
import os
import pickle

import torch
import torch.distributed as dist

import normlab.nn as nl

C = 3


def init(rank, world, init_file, timeout=30):
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )
    torch.manual_seed(0)


def full_batch(sizes, step, shape=(C, 4), dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn((sum(sizes),) + shape, generator=g, dtype=torch.float64) * (1 + step) + 2 * step
    dy = torch.randn(x.shape, generator=g, dtype=torch.float64)
    return x.to(dtype), dy.to(dtype)


def exactness(rank, world, init_file, out_dir, sizes, group_ranks, kwargs, steps=3):
    """Each rank runs SyncBN on its slice; results saved for the parent to compare with plain BN on the whole."""
    init(rank, world, init_file)
    group = dist.new_group(group_ranks) if group_ranks is not None else None
    members = group_ranks if group_ranks is not None else list(range(world))
    module = nl.SyncBatchNorm(C, process_group=group, **kwargs).double()
    with torch.no_grad():
        if module.weight is not None:
            module.weight.copy_(torch.linspace(0.5, 2.0, C))
        if module.bias is not None:
            module.bias.copy_(torch.linspace(-1.0, 1.0, C))
    calls = {"all_gather": 0, "all_reduce": 0}
    real_gather, real_reduce = dist.all_gather, dist.all_reduce

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)

        return wrapped

    dist.all_gather, dist.all_reduce = counting("all_gather", real_gather), counting("all_reduce", real_reduce)
    results = []
    if rank in members:
        i = members.index(rank)
        start = sum(sizes[:i])
        for step in range(steps):
            x, dy = full_batch(sizes, step)
            mine = x[start : start + sizes[i]].clone().requires_grad_(True)
            before = dict(calls)
            y = module(mine)
            forward_calls = {k: calls[k] - before[k] for k in calls}
            y.backward(dy[start : start + sizes[i]])
            results.append(
                dict(
                    y=y.detach(),
                    dx=mine.grad,
                    forward_calls=forward_calls,
                    dw=None if module.weight is None else module.weight.grad.clone(),
                    db=None if module.bias is None else module.bias.grad.clone(),
                )
            )
            module.zero_grad()
        module.eval()
        before = dict(calls)
        module(x[start : start + sizes[i]])
        eval_calls = {k: calls[k] - before[k] for k in calls}
        buffers = {n: b.clone() for n, b in module.named_buffers()}
        with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as fh:
            pickle.dump(dict(steps=results, buffers=buffers, eval_calls=eval_calls, calls=calls), fh)
    dist.all_gather, dist.all_reduce = real_gather, real_reduce
    dist.barrier()
    dist.destroy_process_group()


def disagreement(rank, world, init_file, out_dir, kind):
    init(rank, world, init_file)
    channels = C + (rank if kind == "channels" else 0)
    dtype = torch.float64 if (kind == "dtype" and rank == 1) else torch.float32
    module = nl.SyncBatchNorm(channels).to(dtype)
    try:
        module(torch.randn(4, channels, 3, dtype=dtype))
        outcome = "no error"
    except ValueError as err:
        outcome = str(err)
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as fh:
        fh.write(outcome)
    dist.destroy_process_group()


def dead_peer(rank, world, init_file, out_dir, propagate=False):
    """Rank 1 dies after the first synchronized step; rank 0's next step must raise, not hang, and rank 0 must then
    exit with that error: code 0 once it has written it down, or 1 with its traceback when it lets the error
    propagate (``propagate``), as a user's training script does.

    Both tear the process group down in a ``finally``, as torch requires (and ``normlab.lab.training.distributed_run``
    does): a process that exits with a live gloo group after a failed collective aborts one run in a few, on torch 2.13
    and 2.14 alike, with "terminate called without an active exception" (SIGABRT, exit code -6). Gloo's worker thread is
    still releasing the failed collective's tensors, which takes the GIL; once the interpreter is finalizing, taking it
    ends the thread through a noexcept destructor: ``std::terminate`` (pytorch/pytorch#190489).
    ``destroy_process_group`` joins those threads while the interpreter is alive.
    """
    init(rank, world, init_file, timeout=20)
    try:
        module = nl.SyncBatchNorm(C)
        module(torch.randn(4, C, 3))  # both ranks: first synchronized step works
        if rank == 1:
            os._exit(3)  # dies without a word
        try:
            module(torch.randn(4, C, 3)).sum().backward()
        except Exception as err:  # noqa: BLE001 - what matters is that it is raised, not hung
            _write(out_dir, rank, f"{type(err).__name__}: {err}")
            if propagate:
                raise
        else:
            _write(out_dir, rank, "no error")
    finally:
        dist.destroy_process_group()


def _write(out_dir, rank, text):
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as fh:
        fh.write(text)


def store_writer(path, start, count):
    """Write rows ``start .. start+count`` to the results store at ``path`` (a concurrent writer)."""
    from normlab.lab.store import Store

    with Store(path) as store:
        for i in range(start, start + count):
            store.put(
                {"study": "s", "task": "classify", "norm": "batch", "seed": i},
                {"v": float(i)},
                {"c": list(range(50))},
                0.0,
            )

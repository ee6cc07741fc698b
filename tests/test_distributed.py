"""SyncBatchNorm on real torch.distributed processes (gloo on CPU): exact for any split, clear errors, no hangs."""

import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import workers
from workers import C, full_batch

import normlab
import normlab.nn as nl

TIMEOUT = 90


def launch(target, world, tmp_path, *args, expect_exit=None):
    """Start ``world`` spawned ranks; fail (and kill them) if they are not done within TIMEOUT seconds."""
    ctx = mp.get_context("spawn")
    init_file = tmp_path / f"init-{time.time_ns()}"
    procs = [ctx.Process(target=target, args=(r, world, str(init_file), str(tmp_path), *args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.time() + TIMEOUT
    for p in procs:
        p.join(max(0.1, deadline - time.time()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"ranks {[procs.index(p) for p in alive]} hung past {TIMEOUT}s"
    codes = [p.exitcode for p in procs]
    expected = expect_exit or [0] * world
    killed = "; a negative code is the signal that ended the rank (-6: SIGABRT)" if min(codes) < 0 else ""
    assert codes == expected, f"exit codes {codes}, expected {expected}{killed}"


def reference(sizes, kwargs, steps=3):
    """Plain normlab BatchNorm on the concatenated batch, in one process."""
    module = nl.BatchNorm1d(C, **kwargs).double()
    with torch.no_grad():
        if module.weight is not None:
            module.weight.copy_(torch.linspace(0.5, 2.0, C))
        if module.bias is not None:
            module.bias.copy_(torch.linspace(-1.0, 1.0, C))
    out = []
    for step in range(steps):
        x, dy = full_batch(sizes, step)
        x.requires_grad_(True)
        y = module(x)
        y.backward(dy)
        out.append(
            dict(
                y=y.detach(),
                dx=x.grad,
                dw=None if module.weight is None else module.weight.grad.clone(),
                db=None if module.bias is None else module.bias.grad.clone(),
            )
        )
        module.zero_grad()
    return out, {n: b.clone() for n, b in module.named_buffers()}


def check_exact(tmp_path, sizes, members, kwargs):
    expected, expected_buffers = reference(sizes, kwargs)
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in members]
    close = dict(rtol=1e-10, atol=1e-12)
    for step, exp in enumerate(expected):
        got = [r["steps"][step] for r in ranks]
        torch.testing.assert_close(torch.cat([g["y"] for g in got]), exp["y"], **close)
        torch.testing.assert_close(torch.cat([g["dx"] for g in got]), exp["dx"], **close)
        if exp["dw"] is not None:  # parameter gradients are per-rank partial sums (DDP adds them up)
            torch.testing.assert_close(sum(g["dw"] for g in got), exp["dw"], **close)
        if exp["db"] is not None:
            torch.testing.assert_close(sum(g["db"] for g in got), exp["db"], **close)
        for g in got:
            assert g["forward_calls"] == {"all_gather": 1 if step else 2, "all_reduce": 0}  # + one peer check, once
    for r in ranks:
        assert r["eval_calls"] == {"all_gather": 0, "all_reduce": 0}
        assert r["calls"]["all_reduce"] == len(expected)  # one per backward
        for name, value in expected_buffers.items():
            torch.testing.assert_close(r["buffers"][name], value, **close)


@pytest.mark.parametrize(
    "sizes, kwargs",
    [
        ([3, 5], {}),
        ([4, 4], dict(momentum=None)),
        ([1, 6], dict(affine=False)),
        ([5, 2], dict(track_running_stats=False, bias=False)),
    ],
)
def test_two_ranks_uneven_split_is_exact(tmp_path, sizes, kwargs):
    launch(workers.exactness, 2, tmp_path, sizes, None, kwargs)
    check_exact(tmp_path, sizes, [0, 1], kwargs)


def test_three_ranks_with_an_empty_rank_is_exact(tmp_path):
    sizes = [2, 0, 5]
    launch(workers.exactness, 3, tmp_path, sizes, None, {})
    check_exact(tmp_path, sizes, [0, 1, 2], {})


def test_process_group_subset_is_exact(tmp_path):
    sizes = [3, 4]  # ranks 0 and 2 synchronize; rank 1 stays out of the group
    launch(workers.exactness, 3, tmp_path, sizes, [0, 2], {})
    check_exact(tmp_path, sizes, [0, 2], {})


@pytest.mark.parametrize(
    "kind, message",
    [
        ("channels", "ranks disagree on the channel count (num_features per rank: [3, 4])"),
        ("dtype", "ranks disagree on the input dtype (per rank: ['float32', 'float64'])"),
    ],
)
def test_disagreeing_ranks_all_get_the_same_clear_error(tmp_path, kind, message):
    launch(workers.disagreement, 2, tmp_path, kind)
    for rank in range(2):
        assert message in (tmp_path / f"rank{rank}.txt").read_text()


@pytest.mark.parametrize("propagate", [False, True], ids=["caught", "propagated"])
def test_a_dead_rank_makes_the_others_fail_not_hang(tmp_path, capfd, propagate):
    """The surviving rank gets an error, and exits with it (0 after writing it, 1 with its traceback), never aborts."""
    launch(workers.dead_peer, 2, tmp_path, propagate, expect_exit=[1 if propagate else 0, 3])
    outcome = (tmp_path / "rank0.txt").read_text()
    assert outcome != "no error" and "Error" in outcome
    err = capfd.readouterr().err  # the ranks' stderr: spawned processes inherit the captured descriptor
    assert "terminate called" not in err
    if propagate:
        assert "Traceback" in err and outcome.split(":")[0] in err, err[-2000:]


def test_single_process_is_plain_batch_norm():
    x = torch.randn(6, C, 5)
    sync, plain = nl.SyncBatchNorm(C), nl.BatchNorm1d(C)
    torch.testing.assert_close(sync(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(sync.running_var, plain.running_var, rtol=0, atol=0)


def test_process_group_without_init_is_a_clear_error():
    module = nl.SyncBatchNorm(C, process_group=object())
    with pytest.raises(ValueError, match="process_group is set but torch.distributed is not initialized"):
        module(torch.randn(4, C))


def test_convert_and_state_dict_match_torch(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), nl.BatchNorm2d(4))
    weight = model[1].weight
    nl.SyncBatchNorm.convert_sync_batchnorm(model)
    assert all(isinstance(model[i], nl.SyncBatchNorm) for i in (1, 2)) and model[1].weight is weight
    theirs = torch.nn.SyncBatchNorm(4, momentum=0.3)
    ours = normlab.from_torch(torch.nn.Sequential(theirs))[0]
    assert isinstance(ours, nl.SyncBatchNorm) and ours.momentum == 0.3
    assert list(ours.state_dict()) == list(torch.nn.SyncBatchNorm(4).state_dict())
    torch.save(ours.state_dict(), tmp_path / "s.pt")
    torch.nn.SyncBatchNorm(4).load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert isinstance(normlab.to_torch(torch.nn.Sequential(ours))[0], torch.nn.SyncBatchNorm)


def test_ddp_example_runs_under_torchrun():
    root = Path(__file__).resolve().parents[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port
    proc = subprocess.Popen(
        torchrun + [str(root / "examples" / "ddp_train.py"), "--steps", "5"],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # the ranks too, not only torchrun
        proc.communicate()
        pytest.fail("examples/ddp_train.py hung under torchrun")
    assert proc.returncode == 0, stderr[-2000:]
    assert "running stats equal on every rank: True" in stdout

"""Training under DistributedDataParallel (2 gloo processes on localhost) equals one process on the same
global batches: same gradients, same weights after the steps, same logged statistics."""
import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from toolkit.ir import Graph, Linear, ReLU
from toolkit.train.distributed import DistContext, local_rows
from toolkit.train.methods import make_loss
from toolkit.train.schedules import BetaSchedule, EpsSchedule, LRSchedule
from toolkit.train.trainer import Trainer

N_TRAIN, BATCH, EPS = 12, 7, 0.05  # batches of 7 (split 4 + 3) and 5 (3 + 2): uneven shares on purpose
METHODS = {"cp+d+r": dict(method="cp", lam=0.3, gamma=0.05), "crown-ibp+r": dict(method="crown-ibp", gamma=0.05)}


def _net():
    gen = torch.Generator().manual_seed(0)
    layers = [Linear(torch.randn(16, 10, generator=gen) * 0.4, torch.randn(16, generator=gen) * 0.1), ReLU(),
              Linear(torch.randn(12, 16, generator=gen) * 0.4, torch.randn(12, generator=gen) * 0.1), ReLU(),
              Linear(torch.randn(4, 12, generator=gen) * 0.4, torch.zeros(4))]
    return Graph.sequential(layers, (10,), value_range=(0.0, 1.0))


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(N_TRAIN, 10, generator=gen), torch.randint(0, 4, (N_TRAIN,), generator=gen)


def _train(name, ctx=None):
    """Two SGD steps of ``name``; returns (weights, last gradients, history)."""
    graph, (x, y) = _net(), _data()
    eps_s = EpsSchedule(EPS, 2, 0, 1, start_value=0.01)  # ε and β change between the two steps
    kw = dict(METHODS[name])
    if kw["method"] == "crown-ibp":
        kw["beta"] = BetaSchedule(eps_s, 0.0)
    loss = make_loss(**kw)
    if ctx is not None:
        loss = ctx.wrap_loss(graph, loss)
    opt = torch.optim.SGD(graph.parameters(), lr=0.1, momentum=0.9)
    tr = Trainer(graph, loss, opt, eps_s, LRSchedule(0.1, "constant"), x, y, BATCH, 1, seed=3, grad_clip=1.0,
                 progress=False)
    hist = tr.fit()
    return ({k: v.detach().clone() for k, v in graph.state_dict().items()},
            {k: p.grad.detach().clone() for k, p in graph.named_parameters()}, hist)


def _worker(rank, port, folder):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    ctx = DistContext.from_env("cpu")
    try:
        out = {name: _train(name, ctx) for name in METHODS}
        torch.save(out, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        ctx.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_rows_partition_the_batch():
    for b in range(0, 12):
        for w in (1, 2, 3, 5):
            parts = [local_rows(b, r, w) for r in range(w)]
            assert parts[0].start == 0 and parts[-1].stop == b
            assert all(p.stop == q.start for p, q in zip(parts, parts[1:]))
            assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_not_distributed_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = DistContext.from_env("cpu")
    assert not ctx.active and ctx.is_main
    loss = make_loss("ibp")
    assert ctx.wrap_loss(_net(), loss) is loss


def test_two_gloo_processes_match_one_process(tmp_path):
    single = {name: _train(name) for name in METHODS}
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    results = {r: torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)}
    for name in METHODS:
        w1, g1, h1 = single[name]
        for rank in (0, 1):
            w2, g2, h2 = results[rank][name]
            for k in w1:
                torch.testing.assert_close(g2[k], g1[k], rtol=1e-5, atol=1e-6, msg=f"{name} rank {rank} grad {k}")
                torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6, msg=f"{name} rank {rank} {k}")
            for m in ("loss", "ce", "d", "r", "robust_err", "clean_err", "eps", "beta"):
                a, b = h1[0][m], h2[0][m]
                assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-7), (name, m)
        k0 = next(iter(w1))
        assert not torch.allclose(w1[k0], _net().state_dict()[k0])  # the steps did change the weights
        assert np.isfinite(h1[0]["d"] if name.startswith("cp") else h1[0]["r"])

"""Data-parallel training under ``torchrun``: torch's DistributedDataParallel over the trainer's loss objects.

    torchrun --standalone --nproc_per_node 2 -m toolkit train small --eps 0.1 --out m.onnx ...  # gloo, CPU
    torchrun --standalone --nproc_per_node 4 -m toolkit train ... --device cuda    # NCCL, a GPU per rank

How (no home-made communication: DDP does the gradient all-reduce):

* ``DistContext.from_env`` reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and
  initialises the process group: gloo on CPU, NCCL on CUDA with one device per local rank. Without
  torchrun (WORLD_SIZE unset or 1) it is a no-op context and training is single-process as before.
* Every rank loads the same training set and draws the same epoch permutation (``trainer.epoch_order``
  is a function of (seed, epoch)), so all ranks see the same *global* batch. ``DistributedLoss`` takes
  that global batch from the trainer and computes only this rank's contiguous share of it through a
  ``DistributedDataParallel`` module wrapping (graph, loss object).
* Same result as one process: the loss objects return batch means, and DDP averages gradients over the
  W ranks, so rank r's loss is scaled by n_r·W/B (n_r its rows, B the global batch); the averaged gradient
  is then exactly ∇ of the global-batch mean, also for a last batch that does not split evenly. A rank
  with no rows (B < W) back-propagates 0 × the loss of one sample, so every rank joins every all-reduce.
  The logged statistics (loss, CE, d, r, errors) are all-reduced into global-batch means as well.
  Gradient clipping and the optimiser step then run on identical gradients on every rank.
* Exceptions to bitwise equality: ``cp-proj`` draws its Cauchy projections per call, so ranks draw
  matrices for their share rather than slices of the single-process draw (same distribution, other
  numbers); and float sums over a split batch round differently (~1e-7 relative).

``toolkit.train.api`` uses this context: checkpoints, reports, the ONNX export and the before/after
evaluation are written by rank 0 only; other ranks wait at a barrier.
"""
from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from toolkit.errors import BadInputError

#: Collective timeout: rank 0 evaluates (certifies) alone while the others wait at a barrier.
TIMEOUT = datetime.timedelta(hours=6)
#: Statistics of LossParts that are batch means (all-reduced as sample-weighted sums).
_MEAN_STATS = ("ce", "d", "r", "robust_err", "clean_err")


@dataclass
class DistContext:
    """Rank, world size and device of this process (world_size 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "cpu") -> "DistContext":
        """The context torchrun describes in the environment; initialises the process group once."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(device=device)
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        if str(device).startswith("cuda"):
            if not torch.cuda.is_available() or torch.cuda.device_count() <= local:
                raise BadInputError(f"rank {rank} needs cuda:{local}, but only {torch.cuda.device_count()} CUDA "
                                    "device(s) are visible")
            device, backend = f"cuda:{local}", "nccl"
            torch.cuda.set_device(local)
        else:
            backend = "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=TIMEOUT)
        return cls(rank, world, local, backend, device)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def wrap_loss(self, graph: nn.Module, loss_fn):
        """``loss_fn`` itself when not distributed, else a ``DistributedLoss`` over a DDP module."""
        return DistributedLoss(graph, loss_fn, self) if self.active else loss_fn

    def shutdown(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def local_rows(batch: int, rank: int, world: int) -> slice:
    """This rank's contiguous share of a global batch of ``batch`` rows (sizes differ by at most 1)."""
    base, extra = divmod(batch, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


class _LossModule(nn.Module):
    """graph + loss object as one module, so that DDP's forward sees the loss computation."""

    def __init__(self, graph, loss_fn):
        super().__init__()
        self.graph, self.loss_fn, self.parts = graph, loss_fn, None

    def forward(self, x, y, eps, step):
        self.parts = self.loss_fn(self.graph, x, y, eps, step)
        return self.parts.loss


class DistributedLoss:
    """A loss object for ``Trainer``: called with the global batch, back-propagates this rank's share."""

    def __init__(self, graph, loss_fn, ctx: DistContext):
        self.ctx, self.loss_fn, self.graph = ctx, loss_fn, graph
        ids = [torch.device(ctx.device).index] if str(ctx.device).startswith("cuda") else None
        self.ddp = nn.parallel.DistributedDataParallel(_LossModule(graph, loss_fn), device_ids=ids)

    def __getattr__(self, name):  # describe(), check_graph(), bound_method ... of the wrapped loss
        return getattr(self.__dict__["loss_fn"], name)

    def __call__(self, graph, x, y, eps, step):
        from .methods import LossParts

        if graph is not self.graph:
            raise BadInputError("DistributedLoss was built for another graph")
        n_global, ctx = len(y), self.ctx
        rows = local_rows(n_global, ctx.rank, ctx.world_size)
        n_local = rows.stop - rows.start
        if n_local == 0:
            rows, weight = slice(0, 1), 0.0  # joins the all-reduce with a zero gradient
        else:
            weight = n_local * ctx.world_size / n_global
        local = self.ddp(x[rows], y[rows], eps, step)
        parts = self.ddp.module.parts
        stats = self._global_stats(local.detach(), parts, n_local, n_global, x.device)
        scaled = weight * local
        # value: the global-batch mean (for logs and the divergence check); gradient: this rank's share.
        loss = scaled + (stats["loss"] - scaled).detach()
        return LossParts(loss=loss, beta=parts.beta, kappa=parts.kappa,
                         **{k: stats[k] for k in _MEAN_STATS})

    def _global_stats(self, loss, parts, n_local, n_global, device) -> dict:
        """Sample-weighted sums over ranks / global batch size = the single-process batch means."""
        keys = ("loss",) + _MEAN_STATS
        vals = [float(loss)] + [float(getattr(parts, k)) for k in _MEAN_STATS]
        t = torch.tensor([n_local * v for v in vals], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        out = {k: float(v) / n_global for k, v in zip(keys, t.tolist())}
        out["loss"] = torch.tensor(out["loss"], dtype=loss.dtype, device=device)
        for k in _MEAN_STATS:  # NaN = not computed this step (the same on every rank)
            if math.isnan(getattr(parts, k)):
                out[k] = math.nan
        return out

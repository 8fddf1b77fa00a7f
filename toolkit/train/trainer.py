"""One trainer for every method, with per-epoch checkpoints that resume bit for bit.

Reproducibility: the data order of epoch e is a permutation drawn from a generator seeded by
(seed, e); the ε/β/κ schedules and the cp-proj projections are functions of the global step; the learning
rate is a function of the epoch. A checkpoint written at the end of an epoch therefore needs only the
weights, the optimiser state, the epoch/step counters and the metric history to continue exactly; the
global RNG states are saved and restored as well, for any randomness a loss may draw from them.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from toolkit.errors import BadInputError
from toolkit.fileio import atomic_path

from .schedules import EpsSchedule, LRSchedule

CKPT_NAME = "last.pt"
CKPT_FORMAT = 1
#: Per-epoch metrics kept in the history (and in the report's /train/epochs).
EPOCH_METRICS = ("epoch", "step", "loss", "ce", "d", "r", "robust_err", "clean_err", "eps", "beta", "kappa",
                 "lr", "time_s")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only."""
    gen = torch.Generator().manual_seed((int(seed) * 7919 + int(epoch)) % (2 ** 63))
    return torch.randperm(n, generator=gen)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary name, then rename: a kill never leaves a half-written checkpoint. The state
    travels as one serialised blob with its SHA-256, so damage inside the file is found on resume
    (``load_checked``) instead of training on broken weights (issue 15)."""
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    blob = buf.getvalue()
    with atomic_path(path) as tmp:
        torch.save({"sha256": hashlib.sha256(blob).hexdigest(), "blob": blob}, tmp)


def load_checked(path: Path) -> dict:
    """A checkpoint written by ``save_atomic``, its checksum verified; checkpoints from before the checksum
    (a plain state dict) load as they are. Raises ``BadInputError`` on a damaged or unreadable file."""
    import hashlib
    import io

    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a broken file
        raise BadInputError(f"--resume: checkpoint {path} is unreadable ({e})") from None
    if isinstance(ck, dict) and "blob" in ck:
        if hashlib.sha256(ck["blob"]).hexdigest() != ck.get("sha256"):
            raise BadInputError(f"--resume: checkpoint {path} is corrupt (checksum mismatch); remove its folder "
                                "to start over")
        try:
            ck = torch.load(io.BytesIO(ck["blob"]), map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise BadInputError(f"--resume: checkpoint {path} is unreadable ({e})") from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise BadInputError(f"--resume: {path} is not a tightcert checkpoint")
    return ck


@dataclass
class Trainer:
    """Runs ``epochs`` epochs of ``loss_fn`` over (x, y) with ``optimizer``.

    x, y: the training set (CPU tensors; batches move to ``device``). ckpt_dir: where ``last.pt`` is written
    at the end of every epoch (None: no checkpoints). config: the result-changing settings, stored in the
    checkpoint and compared on resume; config_defaults: the default of each setting, so that a checkpoint
    written before a setting existed resumes when this run leaves that setting at its default. extra: caller data kept in the checkpoint (e.g. the "before"
    evaluation). callbacks: ``f(trainer, epoch_metrics)`` called after each epoch's checkpoint.
    """

    graph: torch.nn.Module
    loss_fn: object
    optimizer: torch.optim.Optimizer
    eps: EpsSchedule
    lr: LRSchedule
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    epochs: int
    seed: int = 0
    device: str = "cpu"
    grad_clip: float = 0.0
    ckpt_dir: Path | None = None
    config: dict = field(default_factory=dict)
    config_defaults: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    progress: bool = True
    callbacks: list = field(default_factory=list)
    checks: list = field(default_factory=list)  # f(trainer, metrics) before each epoch's checkpoint (may stop)
    history: list = field(default_factory=list)
    epoch: int = 0   # epochs completed
    step: int = 0    # optimiser steps completed

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    # -- checkpoints ---------------------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path | None:
        return None if self.ckpt_dir is None else Path(self.ckpt_dir) / CKPT_NAME

    def save(self) -> None:
        if self.ckpt_path is None:
            return
        Path(self.ckpt_dir).mkdir(parents=True, exist_ok=True)
        save_atomic({"format": CKPT_FORMAT, "epoch": self.epoch, "step": self.step, "config": self.config,
                     "model": self.graph.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "history": self.history, "extra": self.extra, "rng": _rng_state()}, self.ckpt_path)

    def load(self) -> None:
        """Restore the last checkpoint; its config must match this run's."""
        path = self.ckpt_path
        if path is None or not path.is_file():
            raise BadInputError(f"--resume: no checkpoint {path} to resume from")
        ck = load_checked(path)
        old = ck.get("config", {})
        # A setting added to the tool after this checkpoint was written is absent from it: the interrupted
        # run used the setting's default, so only a non-default value here is a different run.
        old = {**{k: v for k, v in self.config_defaults.items() if k not in old}, **old}
        diff = [k for k in sorted(set(old) | set(self.config)) if old.get(k) != self.config.get(k)]
        if diff:
            k = diff[0]
            raise BadInputError(f"--resume: checkpoint {path} was made with {k}={old.get(k)!r}, "
                                f"this run has {k}={self.config.get(k)!r}; use the same settings or a new --out")
        self.graph.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.epoch, self.step = int(ck["epoch"]), int(ck["step"])
        self.history, self.extra = list(ck["history"]), dict(ck["extra"])
        _set_rng_state(ck["rng"])

    # -- training ------------------------------------------------------------------------------------------
    @property
    def stopped(self) -> str | None:
        """Why training ended early (kept in the checkpoint's ``extra``), or None."""
        return self.extra.get("stopped")

    def stop(self, reason: str) -> None:
        """End training after this epoch (an epoch check's verdict, e.g. the clean-accuracy guard)."""
        self.extra["stopped"] = reason

    def fit(self) -> list:
        """Train from ``self.epoch`` to ``self.epochs``; returns the per-epoch history."""
        self.graph.to(self.device).train()
        while self.epoch < self.epochs and not self.stopped:
            metrics = self._run_epoch(self.epoch)
            self.epoch += 1
            for check in self.checks:  # before the checkpoint, so that a stop and its rollback are in it
                check(self, metrics)
            self.history.append(metrics)
            self.save()
            for cb in self.callbacks:
                cb(self, metrics)
        self.graph.eval()
        return self.history

    def _run_epoch(self, epoch: int) -> dict:
        from tqdm import tqdm

        lr = self.lr.value(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        order = epoch_order(len(self.x), self.seed, epoch)
        sums, counts = {}, {}
        start = time.monotonic()
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.epochs}", disable=not self.progress,
                   leave=True, dynamic_ncols=True)
        last = None
        for b in range(self.steps_per_epoch):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            xb, yb = self.x[idx].to(self.device), self.y[idx].to(self.device)
            eps = self.eps.value(self.step)
            parts = self.loss_fn(self.graph, xb, yb, eps, self.step)
            self.optimizer.zero_grad(set_to_none=True)
            parts.loss.backward()
            if self.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.graph.parameters(), self.grad_clip)
            self.optimizer.step()
            self.step += 1
            last = (eps, parts)
            for k in ("loss", "ce", "d", "r", "robust_err", "clean_err"):
                v = float(parts.loss.detach()) if k == "loss" else getattr(parts, k)
                if not math.isnan(v):
                    sums[k], counts[k] = sums.get(k, 0.0) + v * len(idx), counts.get(k, 0) + len(idx)
            bar.update(1)
            if self.progress and (b % 10 == 0 or b == self.steps_per_epoch - 1):
                bar.set_postfix_str(_postfix(sums, counts, eps), refresh=False)
        bar.close()
        out = {k: (sums[k] / counts[k] if counts.get(k) else math.nan)
               for k in ("loss", "ce", "d", "r", "robust_err", "clean_err")}
        eps, parts = last
        out.update(epoch=epoch + 1, step=self.step, eps=eps, beta=parts.beta, kappa=parts.kappa, lr=lr,
                   time_s=time.monotonic() - start)
        if not math.isfinite(out["loss"]):
            raise BadInputError(f"training diverged in epoch {epoch + 1} (loss {out['loss']}); lower --lr or "
                                "the regularizer weights")
        return out


def _postfix(sums, counts, eps) -> str:
    def mean(k):
        return f"{sums[k] / counts[k]:.3g}" if counts.get(k) else "-"

    rob = f"{100 * sums['robust_err'] / counts['robust_err']:.1f}%" if counts.get("robust_err") else "-"
    return f"loss={mean('loss')} CE={mean('ce')} d={mean('d')} r={mean('r')} rob.err={rob} eps={eps:.4g}"

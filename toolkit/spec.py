"""The question being asked: an input set and a specification matrix.

Shared by the bound engine, the attack and the certifier so that all of them answer the same query:
lower bounds / minima of ``C f(x')`` over ``x'`` in the set (paper-spec §1.2, §2.1 "bounded input").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from toolkit.errors import BadInputError


@dataclass
class InputSet:
    """An axis-aligned box [lo, hi] per sample (N, *input_shape), with a reference centre ``x``.

    ``from_eps`` builds the l-inf ball of radius eps (scalar, (N,), or broadcastable per-element)
    intersected with the valid-input box ``clip`` (paper-spec §2.1: lo' = max(x-eps, lo),
    hi' = min(x+eps, hi)). A box given per sample (points.npz ``lo``/``hi``) replaces eps and the clip.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    x: torch.Tensor

    @classmethod
    def from_eps(cls, x: torch.Tensor, eps, clip=(0.0, 1.0)) -> "InputSet":
        eps = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
        if not torch.isfinite(eps).all() or (eps < 0).any():
            raise BadInputError(f"epsilon must be finite and >= 0, got {eps.flatten()[:4].tolist()}")
        if not torch.isfinite(x).all():
            raise BadInputError("inputs contain NaN or inf")
        if eps.dim() == 1 and eps.numel() == x.shape[0] and x.dim() > 1:
            eps = eps.reshape(-1, *([1] * (x.dim() - 1)))
        lo, hi = x - eps, x + eps
        if clip is not None:
            c_lo = torch.as_tensor(clip[0], dtype=x.dtype, device=x.device)
            c_hi = torch.as_tensor(clip[1], dtype=x.dtype, device=x.device)
            lo, hi = torch.maximum(lo, c_lo), torch.minimum(hi, c_hi)
            if (lo > hi).any():
                raise BadInputError("the input lies outside the clip box by more than epsilon")
        return cls(lo, hi, x)

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor, x: torch.Tensor | None = None) -> "InputSet":
        if lo.shape != hi.shape:
            raise BadInputError(f"box bounds differ in shape: {tuple(lo.shape)} vs {tuple(hi.shape)}")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise BadInputError("input box contains NaN or inf")
        if (lo > hi).any():
            raise BadInputError("input box has lo > hi")
        return cls(lo, hi, (lo + hi) / 2 if x is None else x)

    @property
    def mid(self):
        return (self.lo + self.hi) / 2

    @property
    def rad(self):
        return (self.hi - self.lo) / 2

    def to(self, *args, **kw) -> "InputSet":
        return InputSet(self.lo.to(*args, **kw), self.hi.to(*args, **kw), self.x.to(*args, **kw))

    def __getitem__(self, idx) -> "InputSet":
        return InputSet(self.lo[idx], self.hi[idx], self.x[idx])

    def __len__(self):
        return self.lo.shape[0]

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """Clamp a batch of points (N, ...) or (N, S, ...) into the box."""
        lo, hi = self.lo, self.hi
        while lo.dim() < z.dim():
            lo, hi = lo.unsqueeze(1), hi.unsqueeze(1)
        return torch.maximum(torch.minimum(z, hi), lo)


def margin_spec(labels: torch.Tensor, n_classes: int, dtype=torch.float32, include_self=False) -> torch.Tensor:
    """C of shape (N, K-1, K) with rows e_y - e_j for j != y (paper-spec §1.2, §7.2 step 2).

    With ``include_self`` the shape is (N, K, K) and row y is zero (so column j of the result is the
    margin against class j and column y is 0: the layout of ``margin_lb``).
    """
    labels = torch.as_tensor(labels).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_classes):
        raise BadInputError(f"labels must lie in 0..{n_classes - 1}")
    n = labels.shape[0]
    eye = torch.eye(n_classes, dtype=dtype, device=labels.device)
    c = eye[labels].unsqueeze(1) - eye.unsqueeze(0)  # (N, K, K): row j = e_y - e_j
    if include_self:
        return c
    keep = ~torch.nn.functional.one_hot(labels, n_classes).bool()  # (N, K)
    return c[keep].reshape(n, n_classes - 1, n_classes)


def other_classes(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(N, K-1) indices j != y in increasing order, matching the rows of ``margin_spec``."""
    labels = torch.as_tensor(labels).long()
    ar = torch.arange(n_classes, device=labels.device).expand(labels.shape[0], n_classes)
    keep = ar != labels.unsqueeze(1)
    return ar[keep].reshape(labels.shape[0], n_classes - 1)


def scatter_margins(values: torch.Tensor, labels: torch.Tensor, n_classes: int, fill=0.0) -> torch.Tensor:
    """(N, K-1) per-other-class values -> (N, K) with ``fill`` in column y."""
    out = torch.full((values.shape[0], n_classes), fill, dtype=values.dtype, device=values.device)
    return out.scatter(1, other_classes(labels, n_classes).to(values.device), values)


def label_column_ignored(margins: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K) margins with column y set to +inf: that column is 0 by layout, not a bound, so a min or an
    all(> 0) over the result reads only the K−1 real specs (NaN stays NaN: never > 0)."""
    return margins.scatter(1, labels[:, None], float("inf"))

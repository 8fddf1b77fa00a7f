"""Local coefficients ("patches") for the intermediate bounds of conv layers (auto_LiRPA's patches mode, for
the chain of single-input ops below a conv layer).

The bound of one conv neuron depends on its receptive field only. A dense backward pass carries its spec as
(N, specs, C, H, W) coefficients on every earlier map, almost all zeros; here each spec carries just its
window, (N, S, C, h, w), with the window's top-left cell per spec, ``corner`` (S, 2), in the current map's
(row, col) coordinates. Starting from a 1×1 window (the unit spec e_j) a conv's transpose grows the window to
((h − 1)·stride + k) and moves the corner to corner·stride − padding; element-wise rules read their per-cell
slopes, bounds or constants at the window's cells (``Patches.gather``). Cells of a window outside the map
stand for a conv's zero padding: their coefficients are zeroed (``Patches.masked``), so they add nothing to
any constant or bound. The numbers are those of the dense pass (a test compares them); only the zeros are
never stored or multiplied. Which ops can do this is each rule's ``patches`` fact and ``patch_backward``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import kernels


@dataclass
class Patches:
    """Coefficients ``data`` (N, S, C, h, w) on the window of each spec, the window at ``corner`` (S, 2).
    ``zero_outside``: the coefficients of cells outside the map are known to be 0 (False only straight after
    a conv's transpose, whose windows may reach into its zero padding)."""

    data: torch.Tensor
    corner: torch.Tensor
    zero_outside: bool = True

    @property
    def window(self):
        return self.data.shape[-2:]

    def _indices(self):
        h, w = self.window
        dev = self.corner.device
        rows = self.corner[:, :1] + torch.arange(h, device=dev)    # (S, h)
        cols = self.corner[:, 1:] + torch.arange(w, device=dev)    # (S, w)
        return rows, cols

    def gather(self, t: torch.Tensor) -> torch.Tensor:
        """``window_values`` of ``t`` at these windows."""
        return window_values(t, self.corner, self.window)

    def masked(self, H: int, W: int) -> "Patches":
        """Zero the coefficients of cells outside an (H, W) map (a conv's zero padding)."""
        if self.zero_outside:
            return self
        rows, cols = self._indices()
        if int(rows.min()) >= 0 and int(cols.min()) >= 0 and int(rows.max()) < H and int(cols.max()) < W:
            return Patches(self.data, self.corner)
        valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]   # (S, h, w)
        d = self.data
        if d.shape[0] > 1 and d.stride(0) == 0:   # the same for every sample: mask one copy
            return Patches((d[:1] * valid[:, None].to(d.dtype)).expand(d.shape), self.corner)
        return Patches(d * valid[:, None].to(d.dtype), self.corner)

    def flat_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Σ over each window of data·t (t broadcastable to data): (N, S)."""
        return (self.data * t).flatten(2).sum(-1)


def window_values(t: torch.Tensor, corner: torch.Tensor, window) -> torch.Tensor:
    """Values of the per-sample map ``t`` (N or 1, C, H, W) at the (h, w) ``window`` at each ``corner`` (S, 2):
    (N or 1, S, C, h, w), 0 on cells outside the map. Every window of the (zero-padded) map is laid out once
    (``unfold``: a row of C·h·w per position), then each spec copies its position's row: contiguous copies
    instead of an element-wise gather."""
    per_position, pos = unfold_windows(t, corner, window)
    return per_position.index_select(1, pos).reshape(per_position.shape[0], -1, t.shape[1], *window)


def unfold_windows(t: torch.Tensor, corner: torch.Tensor, window) -> tuple:
    """(the values of ``t`` on every window position of the corners' grid, (N or 1, L, C·h·w); each spec's
    position in it, (S,)): ``window_values`` before the per-spec copy."""
    h, w = window
    n, c, H, W = t.shape
    rows, cols = corner[:, 0], corner[:, 1]
    r0, c0 = int(rows.min()), int(cols.min())
    top, left = max(0, -r0), max(0, -c0)
    bottom, right = max(0, int(rows.max()) + h - H), max(0, int(cols.max()) + w - W)
    if top or left or bottom or right:
        t = F.pad(t, (left, right, top, bottom))
    # Only the positions on the corners' grid (a conv layer's windows step by its stride): after two stride-2
    # convs one position in 16 of a stride-1 unfold (cifar_base_kw: most of CROWN's time went to unfolding
    # and copying the others, once per chunk of specs)
    sr, sc = _grid_step(rows - r0), _grid_step(cols - c0)
    t = t[..., r0 + top:, c0 + left:]
    per_position = F.unfold(t, (h, w), stride=(sr, sc)).transpose(1, 2).contiguous()      # (N, L, C·h·w)
    pos = (rows - r0) // sr * ((t.shape[-1] - w) // sc + 1) + (cols - c0) // sc
    return per_position, pos


def _grid_step(offsets: torch.Tensor) -> int:
    """The largest step dividing every offset (≥ 0): the stride of the windows' grid (1 if they all coincide)."""
    return math.gcd(*offsets.unique().tolist()) or 1


def unit_patches(rows: torch.Tensor, shape, n: int, like: torch.Tensor, both: bool = True) -> Patches:
    """``backward.unit_specs`` as 1×1 windows: spec e_j for each flat index of ``rows`` in a (C, H, W) map
    (then −e_j too when ``both``), expanded over the batch without copying."""
    c, H, W = shape
    ch, cell = rows // (H * W), rows % (H * W)
    k = rows.numel()
    E = torch.zeros(k, c, 1, 1, dtype=like.dtype, device=like.device)
    E[torch.arange(k, device=like.device), ch] = 1.0
    corner = torch.stack([cell // W, cell % W], 1)
    if both:
        E, corner = torch.cat([E, -E]), torch.cat([corner, corner])
    return Patches(E.unsqueeze(0).expand(n, *E.shape), corner)


def concretize_patches(P: Patches, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
                       upper: bool = False) -> torch.Tensor:
    """``backward.concretize`` for window coefficients on the input: const + g·mid ∓ |g|·rad per window.

    Specs that share a window position in runs (``neuron_bounds`` orders a layer's neurons by cell) take
    their position's mid and rad once, as one matrix product per run: copying them out for every spec (as
    ``window_values`` does) and multiplying element-wise was most of CROWN's time on cifar_base_kw."""
    n, s = P.data.shape[:2]
    box, pos = unfold_windows(torch.cat([(hi + lo) / 2, (hi - lo) / 2], 1), P.corner, P.window)
    at, counts = torch.unique_consecutive(pos, return_counts=True)
    if 4 * at.numel() > s:   # scattered positions: one copy per spec (the runs would be one spec long)
        mid, rad = box.index_select(1, pos).reshape(box.shape[0], s, 2, -1).unbind(2)
        g = P.data.reshape(n, s, -1)
        spread = (g.abs() * rad).sum(-1)
        return const + (g * mid).sum(-1) + (spread if upper else -spread)
    g, k = P.data.reshape(n, s, -1), box.shape[-1] // 2
    box = box.expand(n, *box.shape[1:])
    parts, start = [], 0
    for p, c in zip(at.tolist(), counts.tolist()):
        gp, mid, rad = g[:, start:start + c], box[:, p, :k, None], box[:, p, k:, None]
        spread = torch.bmm(gp.abs(), rad)
        parts.append(torch.bmm(gp, mid) + (spread if upper else -spread))
        start += c
    return const + torch.cat(parts, 1).squeeze(-1)


def _add_transposed(out, flat, hw, weight, stride) -> None:
    """out += the transpose of the (h, w) = ``hw`` windows ``flat`` (rows, C_out, h·w)."""
    (h, w), (kh, kw) = hw, weight.shape[2:]
    cols = flat.transpose(1, 2) @ weight.reshape(weight.shape[0], -1)   # (rows, h·w, C_in·kh·kw)
    cols = cols.reshape(-1, h, w, weight.shape[1], kh, kw)
    # each kernel offset adds one strided copy of the windows (fold); the offsets as views from unbind,
    # whose backward is one stack, where indexing cols[..., p, q] zero-filled all of cols per offset
    # (27 % of a profiled α-CROWN run on MNIST Small; 5-8 % of its wall-clock time)
    for p, row in enumerate(cols.unbind(4)):
        for q, part in enumerate(row.unbind(4)):
            out[:, :, p:p + (h - 1) * stride[0] + 1:stride[0], q:q + (w - 1) * stride[1] + 1:stride[1]] += \
                part.permute(0, 3, 1, 2)


def conv_transpose_patches(P: Patches, weight, stride, window, groups) -> Patches:
    """Window coefficients on a conv's output → on its input: the full transpose of each window (no output
    cropping), of the (corner, (h, w)) ``window`` the rule's ``patch_geometry`` gives. Cells outside the input
    map are not zeroed (``zero_outside`` False): every later step reads them as 0 anyway (gathers read 0
    outside the map, and so does the input box), except a conv's bias, which masks first (``Patches.masked``).
    Zeroing them here, on the larger window, was a fifth of CROWN's time on cifar_base_kw.

    As one matrix product (every window cell's channel vector times the kernel matrix) and one strided add per
    kernel offset (the overlapping kernel copies summed into place): the backend's transposed convolution, and
    ``fold``, are slow on these tiny maps with a huge batch of specs. Without autograd, in blocks of specs
    (``kernels.patch_row_blocks``): the matrix product's output, 2.6× the windows, stays in a reused block
    instead of fresh memory per call (on this machine first-touch page faults made that product a third of
    CROWN's time on cifar_base_kw)."""
    n, s = P.data.shape[:2]
    same = n > 1 and P.data.stride(0) == 0   # identical for every sample (before the first nonlinearity)
    d = P.data[:1] if same else P.data
    co, h, w = d.shape[2:]
    corner, size = window
    if groups == 1:
        flat = d.reshape(-1, co, h * w)
        out = d.new_zeros(flat.shape[0], weight.shape[1], *size)
        for rows in kernels.patch_row_blocks(flat, h * w * weight[0].numel(), weight):
            _add_transposed(out[rows], flat[rows], (h, w), weight, stride)
    else:
        out = F.conv_transpose2d(d.reshape(-1, co, h, w), weight, None, stride, 0, 0, groups)
    out = out.reshape(d.shape[0], s, *out.shape[1:])
    if same:
        out = out.expand(n, *out.shape[1:])
    return Patches(out, corner, zero_outside=False)

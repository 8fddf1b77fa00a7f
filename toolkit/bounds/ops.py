"""One bound rule per IR op: an interval (IBP) rule and a backward linear-relaxation rule.

``backward(node, A, in_bounds, in_shapes, ctx)`` receives ``A`` of shape (N, S, *out_shape): the coefficients of a
linear function of the node's output for S specs per sample. It returns the coefficients on each input
(same layout) and the constant it contributes, shape (N, S). For affine ops this is the transpose; for
nonlinear ops a relaxation chosen by ``ctx`` (paper-spec §2.1). Lookup is by node type (``RULES``), so a
new op means one new class here (the jax_verify / auto_LiRPA pattern without a god object).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from toolkit.errors import UnsupportedOpError
from toolkit.ir import nodes as N


def _flat_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all per-spec axes: (N, S, ...) -> (N, S)."""
    return t.reshape(t.shape[0], t.shape[1], -1).sum(-1)


def _merge(A):
    """(N, S, *shape) -> (N*S, *shape) so per-sample ops can run on it."""
    return A.reshape(A.shape[0] * A.shape[1], *A.shape[2:])


def _split(A, n, s):
    return A.reshape(n, s, *A.shape[1:])


def _same_for_all_samples(A) -> bool:
    """A is one (S, ...) block expanded over the batch (stride 0): the identity specs of intermediate bounds
    before the first nonlinearity. Affine rules then transform one block and expand the result, saving the
    N-fold work and memory."""
    return A.shape[0] > 1 and A.stride(0) == 0


#: Elements of A per block of the no-grad ReLU rule (2 MiB of float32: the block and its temporaries stay
#: in the CPU's L2 cache through the rule's four passes).
RELU_BLOCK_ELEMS = 2 ** 19
#: The blocks' and slices' size on a GPU, where caches do not pay for more kernel launches: only memory
#: counts (64 MiB of float32 work buffers, half the default intermediate-bound chunk).
GPU_BLOCK_ELEMS = 2 ** 24


def _block_elems(t: torch.Tensor, cpu_elems: int) -> int:
    return cpu_elems if t.device.type == "cpu" else GPU_BLOCK_ELEMS


def _row_blocks(n: int, s: int, per_row: int, budget: int):
    """(sample slice, spec slice) blocks covering an (N, S) grid of rows of ``per_row`` elements, in memory
    order, each holding at most ``budget`` elements (at least one row): whole samples at a time when a
    sample fits, else spec slices of one sample."""
    rows = max(1, budget // max(1, per_row))
    if rows >= s:
        step = rows // s
        return [(slice(i, i + step), slice(None)) for i in range(0, n, step)]
    return [(slice(i, i + 1), slice(j, j + rows)) for i in range(n) for j in range(0, s, rows)]


def _conv_transpose(x, w, stride, padding, out_pad, groups, dilation):
    """The transpose of a convolution (its backward rule). On CPU the oneDNN kernel is 2-3× faster on
    channels-last input once the transpose has several output channels, and ~3× slower than the plain
    im2col kernel when it has few (the image layer: oneDNN pads channels to a block of 16). Measured with
    torch 2.14 on MNIST Small (issue 4 notes)."""
    if x.device.type != "cpu":
        return F.conv_transpose2d(x, w, None, stride, padding, out_pad, groups, dilation)
    if w.shape[1] * groups >= 4:
        x = x.contiguous(memory_format=torch.channels_last)
        return F.conv_transpose2d(x, w, None, stride, padding, out_pad, groups, dilation).contiguous()
    if groups == 1:  # the plain kernel (an ATen op, with autograd)
        return torch.ops.aten.slow_conv_transpose2d(x.contiguous(), w, list(w.shape[2:]), None, list(stride),
                                                    list(padding), list(out_pad), list(dilation))
    return F.conv_transpose2d(x, w, None, stride, padding, out_pad, groups, dilation)


#: Elements one slice of a no-grad conv transpose may touch (its input, output and the backend's work
#: buffers; 4 MiB of float32). Slices that fit the CPU caches are faster than one whole call (up to 3× on
#: MNIST Small / cifar_base_kw at batch 100 × 9 specs, torch 2.14) and keep memory near one coefficient
#: tensor for CROWN's large intermediate-bound chunks (issue 4's memory target).
CONV_SLICE_ELEMS = 2 ** 20


def _conv_slice_rows(merged, in_shape, w, groups) -> int:
    """Rows of (N·S, C, H, W) per slice of ``_conv_transpose`` so that one slice touches at most
    ``CONV_SLICE_ELEMS`` elements (``GPU_BLOCK_ELEMS`` on a GPU): on the CPU oneDNN's channels-last path
    pads the output channels to a block of 16, and the plain kernel (few output channels) fills a
    (C·kh·kw, H_out·W_out) column buffer per row."""
    c_out, out_elems = w.shape[1] * groups, math.prod(in_shape)
    if merged.device.type != "cpu":
        per_row = merged[0].numel() + out_elems
    elif c_out >= 4:
        per_row = merged[0].numel() + out_elems * max(1, -(-16 // c_out))
    else:
        per_row = merged[0].numel() + out_elems + c_out * w.shape[2] * w.shape[3] * merged[0, 0].numel()
    return max(1, _block_elems(merged, CONV_SLICE_ELEMS) // per_row)


class Rule:
    op = "?"
    #: Backward rule exists (IBP-only ops raise for linear-relaxation methods).
    has_backward = True

    def ibp(self, node, *bounds):
        raise NotImplementedError

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        raise UnsupportedOpError(node.op, node.onnx_name, method=ctx.method)


class AffineRule(Rule):
    """Interval rule through centre/radius (exact for affine maps)."""

    def ibp(self, node, bounds):
        lo, hi = bounds
        mid, rad = (hi + lo) / 2, (hi - lo) / 2
        return self.interval(node, mid, rad)

    def interval(self, node, mid, rad):
        out_mid = node(mid)
        out_rad = self.abs_linear(node, rad)
        return out_mid - out_rad, out_mid + out_rad


class LinearRule(AffineRule):
    def abs_linear(self, node, rad):
        return rad @ node.weight.abs().t()

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        if _same_for_all_samples(A):
            A1 = A[:1]
            return [(A1 @ node.weight).expand(A.shape[0], *A.shape[1:-1], -1)], (A1 @ node.bias).expand(A.shape[:2])
        return [A @ node.weight], A @ node.bias


class Conv2dRule(AffineRule):
    def abs_linear(self, node, rad):
        return F.conv2d(rad, node.weight.abs(), None, node.stride, node.padding, node.dilation, node.groups)

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        if _same_for_all_samples(A):
            (A_in,), bias = self.backward(node, A[:1], in_bounds, in_shapes, ctx)
            return [A_in.expand(A.shape[0], *A_in.shape[1:])], bias.expand(A.shape[:2])
        n, s = A.shape[:2]
        in_shape = in_shapes[0]
        w = node.weight
        out_pad = []
        for ax in range(2):
            h_in, h_out = in_shape[1 + ax], A.shape[3 + ax]
            k, st, p, d = w.shape[2 + ax], node.stride[ax], node.padding[ax], node.dilation[ax]
            out_pad.append(h_in - ((h_out - 1) * st - 2 * p + d * (k - 1) + 1))  # stride-2 pitfall (§9.2)
        merged = _merge(A)
        conv_t = lambda t: _conv_transpose(t, w, node.stride, node.padding, tuple(out_pad),  # noqa: E731
                                           node.groups, node.dilation)
        rows = _conv_slice_rows(merged, in_shape, w, node.groups) if ctx.low_memory else merged.shape[0]
        if rows < merged.shape[0]:
            # In slices: the backend's work buffers (a reordered copy of its input and output) scale with
            # the slice, so large coefficient tensors stay near one copy (issue 4's memory target).
            A_in = merged.new_empty(merged.shape[0], *in_shape)
            for i in range(0, merged.shape[0], rows):
                A_in[i:i + rows] = conv_t(merged[i:i + rows])
        else:
            A_in = conv_t(merged)
        bias = (A.sum((-1, -2)) * node.bias).sum(-1)
        return [_split(A_in, n, s)], bias


class ReshapeRule(AffineRule):
    def ibp(self, node, bounds):
        return node(bounds[0]), node(bounds[1])

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        return [A.reshape(*A.shape[:2], *in_shapes[0])], None


class TransposeRule(ReshapeRule):
    def backward(self, node, A, in_bounds, in_shapes, ctx):
        inv = [0] * len(node.perm)
        for i, p in enumerate(node.perm):
            inv[p] = i
        return [A.permute(0, 1, *[p + 2 for p in inv])], None


class PadRule(ReshapeRule):
    def backward(self, node, A, in_bounds, in_shapes, ctx):
        left, right, top, bottom = node.pads
        h, w = A.shape[-2:]
        A_in = A[..., top:h - bottom, left:w - right]
        bias = None
        if node.value != 0.0:  # padded cells are the constant ``value``
            bias = node.value * (_flat_sum(A) - _flat_sum(A_in))
        return [A_in], bias


class AvgPoolRule(ReshapeRule):
    """Average pooling has non-negative weights, so its interval rule is monotone."""

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        n, s = A.shape[:2]
        z = torch.zeros(n * s, *in_shapes[0], dtype=A.dtype, device=A.device, requires_grad=True)
        with torch.enable_grad():
            out = node(z)
            (A_in,) = torch.autograd.grad(out, z, _merge(A), create_graph=torch.is_grad_enabled())
        return [_split(A_in, n, s)], None


class ElementwiseAffineRule(AffineRule):
    """Normalize and BatchNorm: y = x * scale + shift."""

    def interval(self, node, mid, rad):
        scale, shift = node.scale_shift()
        if mid.dim() == 2 and scale.dim() == 3:  # BatchNorm1d-style input
            scale, shift = scale.flatten(), shift.flatten()
        return mid * scale + shift - rad * scale.abs(), mid * scale + shift + rad * scale.abs()

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        scale, shift = node.scale_shift()
        if A.dim() == 3 and scale.dim() == 3:
            scale, shift = scale.flatten(), shift.flatten()
        n, s = A.shape[:2]
        # Σ ν·shift as a matrix-vector product: no temporary the size of A (often the input layer's).
        bias = A.reshape(n, s, -1) @ shift.expand(A.shape[2:]).reshape(-1)
        A_in = A.mul_(scale) if ctx.overwrite else A * scale
        return [A_in], bias


class AddRule(Rule):
    def ibp(self, node, a, b):
        return a[0] + b[0], a[1] + b[1]

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        return [A, A], None


class ReLURule(Rule):
    """Triangle-free two-line relaxation of ReLU (paper-spec §1.4, §2.1).

    Upper line: the chord ā = u/(u−l), b̄ = −l·ā for unstable neurons. Lower line through the origin with
    slope chosen by ``ctx.lower_slope`` (Fast-Lin: ā; CROWN: 1[u > −l]; α-CROWN: optimised).
    A coefficient < 0 takes the upper line, ≥ 0 the lower line (tie → lower, §2.1 / §11.1.12).
    """

    def ibp(self, node, bounds):
        return torch.relu(bounds[0]), torch.relu(bounds[1])

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        l, u = in_bounds[0]
        rel = ctx.relaxation(node, l, u)
        n, s = A.shape[:2]
        b_t = rel.upper_intercept.reshape(n, 1, -1).transpose(1, 2)  # (N, M, 1): Σ_m ν_m b̄_m as a bmm
        lo, d = rel.lower_slope, rel.upper_slope - rel.lower_slope
        if not ctx.low_memory:
            # Autograd (training) or the recorded optimum: whole tensors, out of place.
            A_in, bias, extra = self._rule(A, lo, d, b_t, ctx.symmetric, in_place=False)
            if ctx.recording:
                ctx.record(node, rel, A, A < 0)
        else:
            # No autograd: block by block of (sample, spec) rows that fit the CPU caches, overwriting A when
            # ``ctx.overwrite`` says nobody else sees it: peak memory stays near one coefficient tensor
            # (issue 4) instead of the several a whole-tensor form keeps.
            A_in = A if ctx.overwrite else torch.empty(A.shape, dtype=A.dtype, device=A.device)
            bias, extra = A.new_empty(n, s), (A.new_empty(n, s) if ctx.symmetric else None)
            per_spec = lo.shape[1] != 1
            for rows, specs in _row_blocks(n, s, A[0, 0].numel(), _block_elems(A, RELU_BLOCK_ELEMS)):
                pick = (rows, specs) if per_spec else (rows,)  # α: one slope per spec; else shared
                part, bias[rows, specs], e = self._rule(A[rows, specs], lo[pick], d[pick], b_t[rows],
                                                        ctx.symmetric, ctx.overwrite)
                if extra is not None:
                    extra[rows, specs] = e
                if not ctx.overwrite:
                    A_in[rows, specs] = part
        if extra is not None:
            ctx.add_sym_extra(extra)
        return [A_in], bias

    @staticmethod
    def _rule(a, lo, d, b_t, symmetric, in_place):
        """(coefficients on the input, Σ min(ν,0)·b̄, Σ|ν|·b̄ or None) for coefficients ``a`` (N, S', ...).
        lo·ν + min(ν,0)·(ā−lo) picks the upper slope exactly where ν < 0 (torch.where with two broadcast
        operands is ~10× slower than these fused passes on CPU)."""
        n, s = a.shape[:2]
        # Under autograd min(ν, 0) as ν·[ν ≤ 0]: the same values and the same (sub)gradient as clamp, whose
        # backward is a torch.where that cost CROWN-IBP training on MNIST Small more than the transposed convs.
        a_neg = a * (a <= 0).to(a.dtype) if a.requires_grad else a.clamp(max=0)
        bias = (a_neg.reshape(n, s, -1) @ b_t).squeeze(-1)
        extra = (a.abs().reshape(n, s, -1) @ b_t).squeeze(-1) if symmetric else None
        a_in = a.mul_(lo).addcmul_(a_neg, d) if in_place else torch.addcmul(lo * a, a_neg, d)
        return a_in, bias, extra


class MonotoneRule(Rule):
    """Sigmoid, Tanh: monotone increasing, so the interval rule is exact per neuron.

    Backward: constant lines z ≥ f(l), z ≤ f(u) (slope 0). Sound for any increasing f; loose, but never
    wrong. Tighter tangent/chord relaxations are future work.
    """

    def ibp(self, node, bounds):
        return node(bounds[0]), node(bounds[1])

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        l, u = in_bounds[0]
        fl, fu = node(l).unsqueeze(1), node(u).unsqueeze(1)
        bias = _flat_sum(A.clamp(min=0) * fl + A.clamp(max=0) * fu)
        return [torch.zeros_like(A)], bias


class MaxPoolRule(Rule):
    """max over a window: lower line = the input with the largest lower bound (max ≥ any member),
    upper line = the constant max of the upper bounds. Both sound; the interval rule is exact."""

    def ibp(self, node, bounds):
        return node(bounds[0]), node(bounds[1])

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        l, u = in_bounds[0]
        n, s = A.shape[:2]
        _, idx = F.max_pool2d(l, node.kernel_size, node.stride, node.padding, ceil_mode=node.ceil_mode,
                              return_indices=True)
        upper = node(u).unsqueeze(1)
        bias = _flat_sum(A.clamp(max=0) * upper)
        A_pos = A.clamp(min=0)
        c, h, w = l.shape[1:]
        flat_idx = idx.unsqueeze(1).expand(n, s, *idx.shape[1:]).reshape(n, s, c, -1)
        A_in = torch.zeros(n, s, c, h * w, dtype=A.dtype, device=A.device)
        A_in = A_in.scatter_add(3, flat_idx, A_pos.reshape(n, s, c, -1))
        return [A_in.reshape(n, s, c, h, w)], bias


RULES = {
    N.Linear: LinearRule(), N.Conv2d: Conv2dRule(), N.Reshape: ReshapeRule(), N.Flatten: ReshapeRule(),
    N.Transpose: TransposeRule(), N.Pad: PadRule(), N.AvgPool2d: AvgPoolRule(),
    N.Normalize: ElementwiseAffineRule(), N.BatchNorm: ElementwiseAffineRule(), N.Add: AddRule(),
    N.ReLU: ReLURule(), N.Sigmoid: MonotoneRule(), N.Tanh: MonotoneRule(), N.MaxPool2d: MaxPoolRule(),
}


def rule_for(node, method="?") -> Rule:
    rule = RULES.get(type(node))
    if rule is None:
        raise UnsupportedOpError(node.op, node.onnx_name, method=method)
    return rule

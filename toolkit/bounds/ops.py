"""One bound rule per IR op: an interval (IBP) rule and a backward linear-relaxation rule.

``backward(node, A, in_bounds, in_shapes, ctx)`` receives ``A`` of shape (N, S, *out_shape): the coefficients of a
linear function of the node's output for S specs per sample. It returns the coefficients on each input
(same layout) and the constant it contributes, shape (N, S). For affine ops this is the transpose; for
nonlinear ops a relaxation chosen by ``ctx`` (paper-spec §2.1). Lookup is by node type (``RULES``), so a
new op means one new class here (the jax_verify / auto_LiRPA pattern without a god object). The rule is also
the one place for what the rest of the code asks of an op (``FACTS``), its forward-form rule
(``forward_linear``) and its float rounding model (``float_error``); block sizes and kernel choices live in
``kernels.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from toolkit.errors import UnsupportedOpError
from toolkit.ir import nodes as N

from . import kernels
from .patches import Patches, conv_transpose_patches
from .relu import relax


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


#: The facts every rule states (``None`` in the base class; ``tests/test_rules.py`` checks that the rule of
#: every IR node type sets each one, so a new op cannot silently inherit a wrong answer):
#: needs_bounds: the relaxation reads the bounds of the op's input (the op is nonlinear).
#: relu: ReLU lines (upper chord, lower line through 0): α slopes, the regularizers d and r, the relaxed
#:     network of §2.3 and the forward form know how to handle it.
#: parallel_lines: under Fast-Lin's slopes the lower and upper relaxation are parallel (or exact), so one
#:     backward pass with +A gives both bounds (``engine.neuron_bounds``' symmetric shortcut; an op without
#:     it there would make that shortcut's upper bounds unsound).
#: tight_on_box: IBP of the op on a box input is the tightest per output cell (one mixing affine step).
#: box_preserving: the op maps a box onto a box exactly (element-wise or a permutation of cells).
#: cell_moving: each output cell is one input cell or the constant 0 (Reshape, Flatten, Transpose, Pad), so
#:     a per-cell scale pending on the input (the forward form's ReLU slopes) moves along with the cells.
#: forward_form: how the Fast-Lin forward form (§2.4) propagates it: "linear" (``forward_linear``), "relu",
#:     "add", or "" (not supported: the engine falls back to backward passes).
#: patches: ``patch_backward`` carries window coefficients (``patches.Patches``) through the op, so conv
#:     neurons' intermediate bounds can skip the dense maps (``engine.patch_chain``; else dense passes).
FACTS = ("needs_bounds", "relu", "parallel_lines", "tight_on_box", "box_preserving", "cell_moving", "forward_form",
         "patches")

#: float32 unit roundoff (round to nearest).
U32 = 2.0 ** -24


class Rounding:
    """How a node's evaluation may differ from the IR's real-number value (``vnnlib.ir_solver.float_error``):
    ``f32``: the model is evaluated in float32 and every node rounds (γ_n = n·u/(1 − n·u), u = 2^-24);
    else only constants the importer re-expressed with one float32 rounding differ: a bias with a folded
    constant (``folded``), every Linear when a Gemm's alpha/beta were multiplied in (``rescaled``), a
    Normalize's 1/std and −mean/std unless the caller treats the node as exact (``exact``)."""

    def __init__(self, f32: bool, folded: bool = False, rescaled: bool = False, exact: bool = False):
        self.f32, self.folded, self.rescaled, self.exact = f32, folded, rescaled, exact

    @staticmethod
    def gamma_f32(n: int) -> float:
        """γ for a float32 computation of n terms (with the two roundings of a fused step)."""
        k = (n + 2) * U32
        return k / (1 - k)

    def gamma(self, n: int) -> float:
        """γ when every node rounds (float32 semantics), else 0."""
        return self.gamma_f32(n) if self.f32 else 0.0


class Rule:
    op = "?"
    #: Backward rule exists (IBP-only ops raise for linear-relaxation methods).
    has_backward = True
    needs_bounds = relu = parallel_lines = tight_on_box = box_preserving = cell_moving = forward_form = None
    patches = None

    def patches_for(self, node) -> bool:
        """``patches`` for this node (a rule may exclude some configurations of its op)."""
        return bool(self.patches)

    def patch_geometry(self, node, corner, hw):
        """(corner (S, 2), (h, w)) of the window on the op's input that a window at ``corner`` of size ``hw``
        on its output needs (element-wise ops: the same)."""
        return corner, hw

    def patch_backward(self, node, P: Patches, in_bounds, in_shapes, ctx):
        """``backward`` on window coefficients: ([Patches on the input], constant (N, S) or None)."""
        raise NotImplementedError(f"{node.op} has no window (patches) rule")

    def dense_weight(self, node):
        """The matrix W of an op that is x ↦ W·x + b on flat vectors (the forward form folds pending
        per-sample slopes into it), else None."""
        return None

    def ibp(self, node, *bounds):
        raise NotImplementedError

    def ibp_donated(self, node, pair: list):
        """``ibp`` of a single-input op whose input bounds ``pair`` ([lo, hi]) no one reads afterwards: a rule
        may empty the list and reuse their memory (``ibp.ibp_bounds`` with ``keep``)."""
        return self.ibp(node, tuple(pair))

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        raise UnsupportedOpError(node.op, node.onnx_name, method=ctx.method)

    def forward_linear(self, node, flat):
        """The op's linear part (no bias, shift or pad value) on generator columns (M, *in_shape)."""
        raise UnsupportedOpError(node.op, node.onnx_name, method="fastlin (forward)")

    def float_error(self, node, E, M, rounding: Rounding):
        """Bound on |float evaluation − real value| of the output, from the inputs' error bounds ``E`` and
        magnitude bounds ``M`` (lists, one per input)."""
        raise NotImplementedError(f"no float rounding model for {node.op}")


class AffineRule(Rule):
    """Interval rule through centre/radius (exact for affine maps)."""

    needs_bounds, relu, parallel_lines, forward_form = False, False, True, "linear"
    tight_on_box, box_preserving, cell_moving, patches = True, False, False, False

    def ibp(self, node, bounds):
        lo, hi = bounds
        return self._box(*self.interval(node, (hi + lo) / 2, (hi - lo) / 2))

    def ibp_donated(self, node, pair):
        lo, hi = pair
        if lo.requires_grad or hi.requires_grad:
            return self.ibp(node, (lo, hi))
        pair.clear()
        # the same centre and radius as ``ibp`` (same operations, same rounding), the centre in the upper bound's
        # memory: one input-sized tensor less at the op's peak (the IBP row of the CIFAR nets, issue 14)
        rad = hi.sub(lo).div_(2)
        mid = hi.add_(lo).div_(2)
        del lo, hi
        return self._box(*self.interval(node, mid, rad))

    @staticmethod
    def _box(out_mid, out_rad):
        """(lower, upper) from the output's centre and radius."""
        if out_mid.requires_grad or out_rad.requires_grad:
            return out_mid - out_rad, out_mid + out_rad
        # Nothing records these temporaries: the upper bound takes the centre's memory (one output-sized
        # tensor less at the op's peak).
        return out_mid - out_rad, out_mid.add_(out_rad)

    def interval(self, node, mid, rad):
        """The output's centre and radius from the input's."""
        return node(mid), self.abs_linear(node, rad)


class LinearRule(AffineRule):
    def abs_linear(self, node, rad):
        return rad @ node.weight.abs().t()

    def forward_linear(self, node, flat):
        return F.linear(flat, node.weight)

    def dense_weight(self, node):
        return node.weight

    def float_error(self, node, E, M, rounding):
        W, b = node.weight.abs(), node.bias.abs()
        mag = F.linear(M[0] + E[0], W) + b
        e = F.linear(E[0], W) + rounding.gamma(W.shape[1]) * mag
        if not rounding.f32 and rounding.rescaled:
            e = e + 2 * U32 * mag
        elif rounding.folded and not rounding.f32:
            e = e + 2 * U32 * b
        return e

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        if _same_for_all_samples(A):
            A1 = A[:1]
            return [(A1 @ node.weight).expand(A.shape[0], *A.shape[1:-1], -1)], (A1 @ node.bias).expand(A.shape[:2])
        return [A @ node.weight], A @ node.bias


class Conv2dRule(AffineRule):
    patches = True

    def patches_for(self, node):
        return tuple(node.dilation) == (1, 1)

    def patch_geometry(self, node, corner, hw):
        stride, pad = (torch.as_tensor(v, device=corner.device) for v in (node.stride, node.padding))
        return corner * stride - pad, tuple((h - 1) * st + k for h, st, k in zip(hw, node.stride,
                                                                                   node.weight.shape[2:]))

    def patch_backward(self, node, P, in_bounds, in_shapes, ctx):
        P = P.masked(*self._out_hw(node, in_shapes[0][1:]))   # no bias or coefficient for cells off the map
        bias = (P.data.sum((-1, -2)) * node.bias).sum(-1)
        window = self.patch_geometry(node, P.corner, P.window)
        return [conv_transpose_patches(P, node.weight, node.stride, window, node.groups)], bias

    @staticmethod
    def _out_hw(node, in_hw):
        return tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(in_hw, node.padding, node.weight.shape[2:],
                                                                    node.stride))

    def abs_linear(self, node, rad):
        return F.conv2d(rad, node.weight.abs(), None, node.stride, node.padding, node.dilation, node.groups)

    def forward_linear(self, node, flat):
        cl = kernels.channels_last_cpu
        return cl(F.conv2d(cl(flat), node.weight, None, node.stride, node.padding, node.dilation, node.groups))

    def float_error(self, node, E, M, rounding):
        W, b = node.weight.abs(), node.bias.abs().reshape(-1, 1, 1)
        conv = lambda t: F.conv2d(t, W, None, node.stride, node.padding, node.dilation, node.groups)  # noqa: E731
        e = conv(E[0]) + rounding.gamma(W.shape[1] * W.shape[2] * W.shape[3]) * (conv(M[0] + E[0]) + b)
        if rounding.folded and not rounding.f32:
            e = e + 2 * U32 * b
        return e

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
        conv_t = lambda t: kernels.conv_transpose(t, w, node.stride, node.padding, tuple(out_pad),  # noqa: E731
                                           node.groups, node.dilation)
        rows = kernels.conv_slice_rows(merged, in_shape, w, node.groups) if ctx.low_memory else merged.shape[0]
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
    """Reshape, Flatten (and the rules below built on it): moves cells, so boxes stay boxes."""

    box_preserving = cell_moving = True

    def ibp(self, node, bounds):
        return node(bounds[0]), node(bounds[1])

    ibp_donated = Rule.ibp_donated  # its bounds map cell by cell: no centre and radius to place

    def forward_linear(self, node, flat):
        return node(flat)

    def float_error(self, node, E, M, rounding):
        return node(E[0])

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        return [A.reshape(*A.shape[:2], *in_shapes[0])], None


class TransposeRule(ReshapeRule):
    def backward(self, node, A, in_bounds, in_shapes, ctx):
        inv = [0] * len(node.perm)
        for i, p in enumerate(node.perm):
            inv[p] = i
        return [A.permute(0, 1, *[p + 2 for p in inv])], None


class PadRule(ReshapeRule):
    def forward_linear(self, node, flat):
        return F.pad(flat, node.pads, mode="constant", value=0.0)

    def float_error(self, node, E, M, rounding):
        return F.pad(E[0], node.pads, mode="constant", value=0.0)

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

    box_preserving = cell_moving = False  # it mixes cells (one affine step: still tight on a box)

    def float_error(self, node, E, M, rounding):
        k = node.kernel_size[0] * node.kernel_size[1]
        return node(E[0]) + rounding.gamma(k + 1) * node(M[0] + E[0])

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        n, s = A.shape[:2]
        z = torch.zeros(n * s, *in_shapes[0], dtype=A.dtype, device=A.device, requires_grad=True)
        with torch.enable_grad():
            out = node(z)
            (A_in,) = torch.autograd.grad(out, z, _merge(A), create_graph=torch.is_grad_enabled())
        return [_split(A_in, n, s)], None


class ElementwiseAffineRule(AffineRule):
    """Normalize and BatchNorm: y = x * scale + shift."""

    box_preserving = patches = True
    #: The importer re-expresses the constants (Normalize: 1/std and −mean/std in float32).
    reexpressed_constants = False

    def _scale_shift(self, node, like):
        """(scale, shift) shaped for ``like``, a batch (N, *shape) of the op's input."""
        scale, shift = node.scale_shift()
        if like.dim() == 2 and scale.dim() == 3:  # BatchNorm1d-style input
            scale, shift = scale.flatten(), shift.flatten()
        return scale, shift

    def forward_linear(self, node, flat):
        return flat * self._scale_shift(node, flat)[0]

    def float_error(self, node, E, M, rounding):
        sc, t = self._scale_shift(node, E[0])
        redo = rounding.f32 or (self.reexpressed_constants and not rounding.exact)
        return E[0] * sc.abs() + (rounding.gamma_f32(4) if redo else 0.0) * ((M[0] + E[0]) * sc.abs() + t.abs())

    def interval(self, node, mid, rad):
        scale, shift = self._scale_shift(node, mid)
        return mid * scale + shift, rad * scale.abs()

    def patch_backward(self, node, P, in_bounds, in_shapes, ctx):
        scale, shift = node.scale_shift()
        full = lambda t: P.gather(t.expand(in_shapes[0]).unsqueeze(0))  # noqa: E731  (1, S, C, h, w)
        return [Patches(P.data * full(scale), P.corner)], P.flat_sum(full(shift))

    def backward(self, node, A, in_bounds, in_shapes, ctx):
        scale, shift = self._scale_shift(node, A[0])  # A[0]: (S, *shape), laid out like a batch
        n, s = A.shape[:2]
        # Σ ν·shift as a matrix-vector product: no temporary the size of A (often the input layer's).
        bias = A.reshape(n, s, -1) @ shift.expand(A.shape[2:]).reshape(-1)
        A_in = A.mul_(scale) if ctx.overwrite else A * scale
        return [A_in], bias


class NormalizeRule(ElementwiseAffineRule):
    reexpressed_constants = True


class AddRule(Rule):
    needs_bounds, relu, parallel_lines, forward_form = False, False, True, "add"
    tight_on_box = box_preserving = cell_moving = patches = False  # two inputs: a sum of correlated terms

    def float_error(self, node, E, M, rounding):
        return E[0] + E[1] + rounding.gamma(0) * (M[0] + E[0] + M[1] + E[1])

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

    needs_bounds, relu, parallel_lines, forward_form = True, True, True, "relu"
    tight_on_box = box_preserving = cell_moving = False
    patches = True

    def float_error(self, node, E, M, rounding):
        return E[0]  # max(x, 0) is exact and 1-Lipschitz

    def patch_backward(self, node, P, in_bounds, in_shapes, ctx):
        if ctx.recording:
            raise NotImplementedError("the recorded optimum is a dense (N, S, *shape) tensor")
        l, u = in_bounds[0]
        alpha = ctx.alpha_slope()   # α-CROWN's slopes on this window (``alpha.py``): (N, S, C, h, w)

        def gathered():
            rel = relax(l, u, ctx.slope_rule)
            maps = [rel.lower_slope.squeeze(1), rel.upper_slope.squeeze(1), rel.upper_intercept.squeeze(1)]
            if alpha is not None:
                maps.append(rel.unstable.to(l.dtype))
            # one gather for all maps; cells outside the map read 0: their coefficients become 0 here
            return P.gather(torch.cat(maps, 1)).chunk(len(maps), 2)

        lo, up, b, *unstable = ctx.cached_gather(l, u, P, gathered)
        if alpha is not None:
            lo = torch.where(unstable[0] > 0, alpha, lo)
        d = up - lo
        a = P.data
        if ctx.symmetric:
            ctx.add_sym_extra((a.abs() * b).flatten(2).sum(-1))
        # with or without autograd: the function's forward is the plain element-wise line choice
        a_in, bias = _ReluLines.apply(a, lo, d, b, True)
        return [Patches(a_in, P.corner)], bias

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
            for rows, specs in kernels.row_blocks(n, s, A[0, 0].numel(),
                                                           kernels.block_elems(A, kernels.RELU_BLOCK_ELEMS)):
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
        extra = (a.abs().reshape(n, s, -1) @ b_t).squeeze(-1) if symmetric else None
        if torch.is_grad_enabled() and any(t.requires_grad for t in (a, lo, d, b_t)):
            return (*_ReluLines.apply(a, lo, d, b_t, False), extra)
        a_neg = a.clamp(max=0)
        bias = (a_neg.reshape(n, s, -1) @ b_t).squeeze(-1)
        a_in = a.mul_(lo).addcmul_(a_neg, d) if in_place else torch.addcmul(lo * a, a_neg, d)
        return a_in, bias, extra


class _ReluLines(torch.autograd.Function):
    """ReLURule's line choice under autograd: (lo·ν + min(ν,0)·d, Σ min(ν,0)·b̄), the subgradient of min(ν,0)
    taken as [ν ≤ 0] (1 at ν = 0, as the earlier ν·[ν ≤ 0] form gave). b̄ comes as (N, M, 1) for dense
    coefficients (the sum is a batched matrix-vector product) or, ``windowed``, per window cell like ν. Saves ν,
    lo, d and b̄ only: the element-wise form kept five tensors of ν's size per ReLU (ν, its mask, min(ν,0), lo,
    d), α-CROWN's memory peak on the MLPs, and its backward made more passes over them."""

    @staticmethod
    def forward(ctx, a, lo, d, b, windowed):
        n, s = a.shape[:2]
        a_neg = a.clamp(max=0)
        bias = (a_neg * b).flatten(2).sum(-1) if windowed else (a_neg.reshape(n, s, -1) @ b).squeeze(-1)
        ctx.save_for_backward(a, lo, d, b)
        ctx.windowed = windowed
        return torch.addcmul(lo * a, a_neg, d), bias

    @staticmethod
    def backward(ctx, g_in, g_bias):
        a, lo, d, b = ctx.saved_tensors
        n, s = a.shape[:2]
        need = ctx.needs_input_grad
        g_b = g_bias.reshape(n, s, *([1] * (a.dim() - 2)))   # the spec's bias gradient on each of its cells
        glo = _reduce_to(g_in * a, lo.shape) if need[1] else None
        a_neg = a.clamp(max=0)   # its gradient below is [ν ≤ 0], also at ν = 0
        gd = _reduce_to(a_neg * g_in, d.shape) if need[2] else None
        gb = None
        if need[3]:
            gb = _reduce_to(a_neg.mul_(g_b), b.shape) if ctx.windowed else \
                a_neg.reshape(n, s, -1).transpose(1, 2) @ g_bias.unsqueeze(-1)
        ga = None
        if need[0]:
            # ∂/∂ν = lo + [ν ≤ 0]·(d + b̄·(the spec's bias gradient)), built in place in one tensor
            if ctx.windowed:
                ga = (g_in * d).addcmul_(g_b, b)
            else:
                ga = (g_in * d).reshape(n, s, -1).addcmul_(g_bias.unsqueeze(-1), b.transpose(1, 2)).reshape(a.shape)
            ga = ga.mul_(a <= 0).addcmul_(g_in, lo)
        return ga, glo, gd, gb, None


def _reduce_to(t, shape):
    """Sum a gradient over the axes its input was broadcast along."""
    dims = [i for i, (a, b) in enumerate(zip(t.shape, shape)) if b == 1 and a != 1]
    return t.sum(dims, keepdim=True) if dims else t


class MonotoneRule(Rule):
    """Sigmoid, Tanh: monotone increasing, so the interval rule is exact per neuron.

    Backward: constant lines z ≥ f(l), z ≤ f(u) (slope 0). Sound for any increasing f; loose, but never
    wrong. Tighter tangent/chord relaxations are future work.
    """

    needs_bounds, relu, parallel_lines, forward_form = True, False, False, ""
    tight_on_box = box_preserving = cell_moving = patches = False
    #: Lipschitz constant, for the float error model: the input error passes through scaled by it, and the
    #: float32 library function adds its own error (≤ 2^-18 + 2^-20 absolute on these bounded outputs).
    lipschitz = None

    def float_error(self, node, E, M, rounding):
        return self.lipschitz * E[0] + ((2.0 ** -18 + 2.0 ** -20) if rounding.f32 else 0.0)

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

    needs_bounds, relu, parallel_lines, forward_form = True, False, False, ""
    tight_on_box = box_preserving = cell_moving = patches = False

    def float_error(self, node, E, M, rounding):
        return node(E[0])  # max is exact and 1-Lipschitz per window

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


class SigmoidRule(MonotoneRule):
    lipschitz = 0.25


class TanhRule(MonotoneRule):
    lipschitz = 1.0


RULES = {
    N.Linear: LinearRule(), N.Conv2d: Conv2dRule(), N.Reshape: ReshapeRule(), N.Flatten: ReshapeRule(),
    N.Transpose: TransposeRule(), N.Pad: PadRule(), N.AvgPool2d: AvgPoolRule(),
    N.Normalize: NormalizeRule(), N.BatchNorm: ElementwiseAffineRule(), N.Add: AddRule(),
    N.ReLU: ReLURule(), N.Sigmoid: SigmoidRule(), N.Tanh: TanhRule(), N.MaxPool2d: MaxPoolRule(),
}


def rule_for(node, method="?") -> Rule:
    rule = RULES.get(type(node))
    if rule is None:
        raise UnsupportedOpError(node.op, node.onnx_name, method=method)
    return rule

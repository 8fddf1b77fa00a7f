"""Kernel tuning for the CPU caches and the GPU: block sizes and kernel choices of the backward rules.

The maths of each op lives in its rule (``ops.py``); how a rule's no-grad form is cut into blocks that fit
the CPU's caches, and which convolution-transpose kernel runs fastest on which device, lives here (issue 14:
tuning kept out of the maths). The block budgets are module attributes so that tests can shrink them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

def channels_last_cpu(t: torch.Tensor) -> torch.Tensor:
    """Channels-last on CPU: oneDNN's convolution is ~3× faster on it for the forward form's generator blocks
    (issue 4 notes). Conv outputs stay channels-last and the element-wise steps keep that layout, so only
    the first conv and the final Flatten convert."""
    return t.contiguous(memory_format=torch.channels_last) if t.device.type == "cpu" and t.dim() == 4 else t


#: Elements of A per block of the no-grad ReLU rule (2 MiB of float32: the block and its temporaries stay
#: in the CPU's L2 cache through the rule's four passes).
RELU_BLOCK_ELEMS = 2 ** 19
#: The blocks' and slices' size on a GPU, where caches do not pay for more kernel launches: only memory
#: counts (64 MiB of float32 work buffers, half the default intermediate-bound chunk).
GPU_BLOCK_ELEMS = 2 ** 24


#: α-CROWN groups samples into sub-batches of at most this many working-set elements on CPU (a sample needing
#: more still runs alone, up to the α budget): smaller groups stay closer to the caches. Measured on MNIST Small
#: and cifar_base_kw, 10 samples, 20 iterations (2^28 → 2^26): 33 → 27 s and 988 → 289 MiB, 21 → 15 s and
#: 332 → 186 MiB, the same bounds. On a GPU only memory counts: the group is the whole budget.
ALPHA_GROUP_ELEMS = 2 ** 26


def alpha_group_elems(device: torch.device, budget: int) -> int:
    return min(budget, ALPHA_GROUP_ELEMS) if device.type == "cpu" else budget


def block_elems(t: torch.Tensor, cpu_elems: int) -> int:
    return cpu_elems if t.device.type == "cpu" else GPU_BLOCK_ELEMS


def row_blocks(n: int, s: int, per_row: int, budget: int):
    """(sample slice, spec slice) blocks covering an (N, S) grid of rows of ``per_row`` elements, in memory
    order, each holding at most ``budget`` elements (at least one row): whole samples at a time when a
    sample fits, else spec slices of one sample."""
    rows = max(1, budget // max(1, per_row))
    if rows >= s:
        step = rows // s
        return [(slice(i, i + step), slice(None)) for i in range(0, n, step)]
    return [(slice(i, i + 1), slice(j, j + rows)) for i in range(n) for j in range(0, s, rows)]


def conv_transpose(x, w, stride, padding, out_pad, groups, dilation):
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


def conv_slice_rows(merged, in_shape, w, groups) -> int:
    """Rows of (N·S, C, H, W) per slice of ``conv_transpose`` so that one slice touches at most
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
    return max(1, block_elems(merged, CONV_SLICE_ELEMS) // per_row)


#: Elements of the column buffer (the kernel-matrix product) per block of window coefficients in
#: ``patches.conv_transpose_patches`` without autograd (4 MiB of float32). One product over all specs wrote
#: ~85 MB of fresh memory per call on cifar_base_kw's first conv; on this machine (a VM without transparent
#: huge pages) its first-touch page faults cost more than the product. Blocks reuse one freed buffer.
PATCH_BLOCK_ELEMS = 2 ** 20


def patch_row_blocks(flat: torch.Tensor, per_row: int, weight: torch.Tensor) -> list:
    """Slices of ``flat``'s rows for ``conv_transpose_patches``: blocks of at most ``PATCH_BLOCK_ELEMS`` column
    elements (``per_row`` each) without autograd; one slice when autograd records (in-place adds into
    slices of one output would each add a node to the graph)."""
    n = flat.shape[0]
    if torch.is_grad_enabled() and (flat.requires_grad or weight.requires_grad):
        return [slice(None)]
    rows = max(1, block_elems(flat, PATCH_BLOCK_ELEMS) // max(1, per_row))
    return [slice(i, i + rows) for i in range(0, n, rows)]

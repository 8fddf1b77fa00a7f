"""Typed IR nodes: one small ``nn.Module`` per op (architecture.md, "IR").

Each node keeps the ONNX name it came from (``onnx_name``) so that error messages can point at the
original graph. Per-sample shapes never include the batch axis; every node works on a batch.
Nodes know nothing about bounds: the bound rules live in ``toolkit.bounds`` and are looked up by
node type, so adding an op means adding one class here and one rule there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Node(nn.Module):
    """Base IR node. ``op`` is the IR op name shown by ``tightcert info``."""

    op = "Node"
    #: True when the node is an affine map of its input(s) (bounds can use its transpose).
    affine = False

    def __init__(self, onnx_name: str = ""):
        super().__init__()
        self.onnx_name = onnx_name or self.op

    def describe(self) -> str:
        return ""

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters()) + sum(b.numel() for b in self.buffers())


class Linear(Node):
    """y = x W^T + b, x of shape (N, in). MatMul(+Add) and Gemm lower to this."""

    op = "Linear"
    affine = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, onnx_name: str = ""):
        super().__init__(onnx_name)
        self.weight = nn.Parameter(weight.detach().clone())
        if bias is None:
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def describe(self):
        return f"{self.weight.shape[1]}→{self.weight.shape[0]}"


class Conv2d(Node):
    op = "Conv2d"
    affine = True

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, onnx_name=""):
        super().__init__(onnx_name)
        self.weight = nn.Parameter(weight.detach().clone())
        if bias is None:
            bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
        self.bias = nn.Parameter(bias.detach().clone())
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))
        self.stride, self.padding, self.dilation = pair(stride), pair(padding), pair(dilation)
        self.groups = int(groups)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def describe(self):
        o, i, kh, kw = self.weight.shape
        return f"{i * self.groups}→{o}, k={kh}x{kw}, s={self.stride}, p={self.padding}"


class ReLU(Node):
    op = "ReLU"

    def forward(self, x):
        return torch.relu(x)


class Sigmoid(Node):
    op = "Sigmoid"

    def forward(self, x):
        return torch.sigmoid(x)


class Tanh(Node):
    op = "Tanh"

    def forward(self, x):
        return torch.tanh(x)


class Reshape(Node):
    """Reshape each sample to ``shape`` (no batch axis); Flatten is ``Reshape((-1,))``."""

    op = "Reshape"
    affine = True

    def __init__(self, shape, onnx_name=""):
        super().__init__(onnx_name)
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape)

    def describe(self):
        return str(self.shape)


class Flatten(Reshape):
    op = "Flatten"

    def __init__(self, onnx_name=""):
        super().__init__((-1,), onnx_name)

    def forward(self, x):
        return torch.flatten(x, 1)  # the same reshape; exports as one ONNX Flatten, not Shape/Gather/Reshape

    def describe(self):
        return ""


class Transpose(Node):
    """Permute the per-sample axes; ``perm`` indexes per-sample axes (batch excluded)."""

    op = "Transpose"
    affine = True

    def __init__(self, perm, onnx_name=""):
        super().__init__(onnx_name)
        self.perm = tuple(int(p) for p in perm)

    def forward(self, x):
        return x.permute(0, *[p + 1 for p in self.perm])

    def describe(self):
        return str(self.perm)


class Add(Node):
    """Sum of two graph tensors (a residual connection)."""

    op = "Add"
    affine = True

    def forward(self, a, b):
        return a + b


class Normalize(Node):
    """Element-wise affine map y = x * scale + shift with constant tensors broadcast per sample.

    In-graph mean/std (Sub/Div), Mul/Add by constants, and a user's ``--mean/--std`` all become this.
    """

    op = "Normalize"
    affine = True

    def __init__(self, scale, shift, onnx_name=""):
        super().__init__(onnx_name)
        self.register_buffer("scale", torch.as_tensor(scale).detach().clone())
        self.register_buffer("shift", torch.as_tensor(shift).detach().clone())

    @classmethod
    def from_mean_std(cls, mean, std, n_channels_axis_shape, onnx_name="normalize"):
        """(x - mean)/std with per-channel mean/std shaped to broadcast over ``n_channels_axis_shape``."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(n_channels_axis_shape)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(n_channels_axis_shape)
        return cls(1.0 / std, -mean / std, onnx_name)

    def forward(self, x):
        return x * self.scale + self.shift

    def scale_shift(self):
        return self.scale, self.shift

    def describe(self):
        s, b = self.scale.flatten(), self.shift.flatten()
        if s.numel() <= 3:
            return f"scale={[round(v, 4) for v in s.tolist()]}, shift={[round(v, 4) for v in b.tolist()]}"
        return f"scale/shift shape {tuple(self.scale.shape)}"


class BatchNorm(Node):
    """Inference-mode BatchNorm over axis 1: an element-wise affine map per channel."""

    op = "BatchNorm"
    affine = True

    def __init__(self, mean, var, weight, bias, eps=1e-5, onnx_name=""):
        super().__init__(onnx_name)
        self.register_buffer("running_mean", torch.as_tensor(mean).detach().clone())
        self.register_buffer("running_var", torch.as_tensor(var).detach().clone())
        self.weight = nn.Parameter(torch.as_tensor(weight).detach().clone())
        self.bias = nn.Parameter(torch.as_tensor(bias).detach().clone())
        self.eps = float(eps)

    def scale_shift(self):
        c = self.weight.shape[0]
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return scale.reshape(c, 1, 1), shift.reshape(c, 1, 1)

    def forward(self, x):
        scale, shift = self.scale_shift()
        if x.dim() == 2:
            return x * scale.flatten() + shift.flatten()
        return x * scale + shift


class Pad(Node):
    """Constant padding of the two spatial axes: ``pads`` = (left, right, top, bottom) as in F.pad."""

    op = "Pad"
    affine = True

    def __init__(self, pads, value=0.0, onnx_name=""):
        super().__init__(onnx_name)
        self.pads = tuple(int(p) for p in pads)
        self.value = float(value)

    def forward(self, x):
        return F.pad(x, self.pads, mode="constant", value=self.value)

    def describe(self):
        return str(self.pads)


class AvgPool2d(Node):
    op = "AveragePool"
    affine = True

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True, ceil_mode=False,
                 onnx_name=""):
        super().__init__(onnx_name)
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))
        self.kernel_size = pair(kernel_size)
        self.stride = pair(stride if stride is not None else kernel_size)
        self.padding = pair(padding)
        self.count_include_pad, self.ceil_mode = bool(count_include_pad), bool(ceil_mode)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)

    def describe(self):
        return f"k={self.kernel_size}, s={self.stride}, p={self.padding}"


class MaxPool2d(Node):
    op = "MaxPool"

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, onnx_name=""):
        super().__init__(onnx_name)
        pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))
        self.kernel_size = pair(kernel_size)
        self.stride = pair(stride if stride is not None else kernel_size)
        self.padding = pair(padding)
        self.ceil_mode = bool(ceil_mode)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)

    def describe(self):
        return f"k={self.kernel_size}, s={self.stride}, p={self.padding}"


#: IR op name -> class, for messages and the exporter's provenance.
NODE_TYPES = {c.op: c for c in (Linear, Conv2d, ReLU, Sigmoid, Tanh, Reshape, Flatten, Transpose, Add,
                                Normalize, BatchNorm, Pad, AvgPool2d, MaxPool2d)}

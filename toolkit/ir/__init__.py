"""Layer-graph IR (imports nothing of bounds, train, certify or report)."""
from .graph import INPUT, Graph, InputSpec
from .nodes import (NODE_TYPES, Add, AvgPool2d, BatchNorm, Conv2d, Flatten, Linear, MaxPool2d, Node,
                    Normalize, Pad, ReLU, Reshape, Sigmoid, Tanh, Transpose)

__all__ = ["INPUT", "Graph", "InputSpec", "NODE_TYPES", "Add", "AvgPool2d", "BatchNorm", "Conv2d", "Flatten",
           "Linear", "MaxPool2d", "Node", "Normalize", "Pad", "ReLU", "Reshape", "Sigmoid", "Tanh", "Transpose"]

# ONNX import/export (onnx2torch and onnxruntime are imported lazily inside the functions)
from .onnx_export import export_onnx  # noqa: E402
from .onnx_import import import_onnx  # noqa: E402

__all__ += ["export_onnx", "import_onnx"]

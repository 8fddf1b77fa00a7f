"""Layer-graph IR (imports nothing of bounds, train, certify or report)."""
from .graph import INPUT, Graph, InputSpec
from .nodes import (NODE_TYPES, Add, AvgPool2d, BatchNorm, Conv2d, Flatten, Linear, MaxPool2d, Node,
                    Normalize, Pad, ReLU, Reshape, Sigmoid, Tanh, Transpose)

__all__ = ["INPUT", "Graph", "InputSpec", "NODE_TYPES", "Add", "AvgPool2d", "BatchNorm", "Conv2d", "Flatten",
           "Linear", "MaxPool2d", "Node", "Normalize", "Pad", "ReLU", "Reshape", "Sigmoid", "Tanh", "Transpose"]

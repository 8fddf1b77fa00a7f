"""Certification over a dataset: clean, PGD and certified errors, written to an HDF5 report.

``certify(graph, dataset, eps, methods, out=...)`` works on objects (tests, ``make demo``);
``certify_model(path, data, eps, methods, ...)`` imports the ONNX file and loads the data first (the CLI).
"""
from .checks import COST_ORDER, order_methods
from .core import CertifyResult, certify, certify_batch
from .api import certify_model

__all__ = ["COST_ORDER", "order_methods", "CertifyResult", "certify", "certify_batch", "certify_model"]

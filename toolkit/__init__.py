"""tightcert: import ONNX classifiers, certify them under l-inf balls, train them with the tightness
regularizers of Zhu et al. (arXiv 2002.09766), and export the improved ONNX model.

Importing this package is cheap (no torch): the CLI's ``--name``/``--version``/``supports`` rely on it.
"""
__version__ = "0.1.0"
NAME = "tightcert"

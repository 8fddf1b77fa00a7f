"""Certified training and fine-tuning (loss objects over one trainer) and the regularizers d and r."""
from .regularizers import R_NORMS, real_activations, reg_d, reg_r

__all__ = ["R_NORMS", "real_activations", "reg_d", "reg_r"]

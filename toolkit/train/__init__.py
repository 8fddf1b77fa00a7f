"""Certified training and fine-tuning (loss objects over one trainer) and the regularizers d and r."""
from .regularizers import R_NORMS, real_activations, reg_d, reg_r
from .methods import (CCIBPLoss, CPLoss, CrownIBPLoss, ExpIBPLoss, IBPLoss, LossParts, MTLIBPLoss, RegConfig,
                      SABRLoss, make_loss)
from .schedules import BetaSchedule, EpsSchedule, KappaSchedule, LRSchedule
from .trainer import Trainer
from .api import TrainConfig, TrainOutcome, finetune, train

__all__ = ["R_NORMS", "real_activations", "reg_d", "reg_r", "CPLoss", "CrownIBPLoss", "IBPLoss", "LossParts",
           "RegConfig", "MTLIBPLoss", "ExpIBPLoss", "CCIBPLoss", "SABRLoss", "make_loss", "BetaSchedule", "EpsSchedule", "KappaSchedule",
           "LRSchedule", "Trainer",
           "TrainConfig", "TrainOutcome", "finetune", "train"]

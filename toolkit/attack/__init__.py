"""Adversarial attacks: PGD over an input box (imports nothing of bounds, train, certify or report)."""
from .pgd import AttackResult, pgd_attack, pgd_minimize, spec_values

__all__ = ["AttackResult", "pgd_attack", "pgd_minimize", "spec_values"]

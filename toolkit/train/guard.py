"""Fine-tuning's clean-accuracy guard (issue 16): certified fine-tuning of a pre-trained model trades clean
accuracy for certified accuracy, and a user who hands us a working classifier must not get back a useless one.

The guard holds out the last ``n`` training images (never the test set, never trained on). Before the first
epoch it measures their clean error (the model as handed over); after every epoch, before the checkpoint, it
measures it again. While the error stays within ``tolerance`` percentage points of the starting one, that
epoch's weights become the fallback; the first epoch that exceeds it stops training and restores the fallback
(the starting weights if no epoch passed). The fallback and the verdict live in ``trainer.extra["guard"]``,
so they are in every checkpoint and a resumed run continues (or stays stopped) exactly as it would have.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CleanGuard:
    x: torch.Tensor
    y: torch.Tensor
    tolerance: float        # percentage points of clean error above the starting one
    batch_size: int = 500

    def clean_error(self, graph) -> float:
        """Clean error in % on the held-out images, in eval mode (the training mode is restored)."""
        was_training = graph.training
        graph.eval()
        wrong = 0
        dev = next(graph.parameters()).device
        with torch.no_grad():
            for i in range(0, len(self.x), self.batch_size):
                xb = self.x[i:i + self.batch_size].to(dev)
                wrong += int((graph(xb).reshape(len(xb), -1).argmax(1).cpu() != self.y[i:i + len(xb)]).sum())
        graph.train(was_training)
        return 100.0 * wrong / len(self.x)

    def start(self, trainer) -> None:
        """Record the starting error and weights (once: a resumed run keeps its stored ones)."""
        if "guard" not in trainer.extra:
            trainer.extra["guard"] = {"start_clean_err": self.clean_error(trainer.graph), "n": len(self.x),
                                      "tolerance": float(self.tolerance), "best_epoch": 0,
                                      "best_state": _cpu_state(trainer.graph), "stopped_at": None,
                                      "stopped_clean_err": None}

    def __call__(self, trainer, metrics) -> None:
        """An epoch check (runs before the epoch's checkpoint): pass, or stop and roll back."""
        g = trainer.extra["guard"]
        err = self.clean_error(trainer.graph)
        metrics["guard_clean_err"] = err
        if err <= g["start_clean_err"] + g["tolerance"]:
            g["best_epoch"], g["best_state"] = trainer.epoch, _cpu_state(trainer.graph)
            return
        trainer.graph.load_state_dict(g["best_state"])
        g["stopped_at"], g["stopped_clean_err"] = trainer.epoch, err
        trainer.stop(f"clean-accuracy guard: clean error {err:.2f} % on {g['n']} held-out training images "
                     f"after epoch {trainer.epoch} exceeds {g['start_clean_err']:.2f} % + {g['tolerance']:g}; "
                     f"rolled back to epoch {g['best_epoch']}")


def summary(extra: dict) -> dict | None:
    """The guard's verdict for reports (no weights), or None when the run had no guard."""
    g = extra.get("guard")
    return None if g is None else {k: v for k, v in g.items() if k != "best_state"}


def _cpu_state(graph) -> dict:
    return {k: v.detach().cpu().clone() for k, v in graph.state_dict().items()}

"""Fine-tuning's clean-accuracy guard (issue 16): certified fine-tuning of a pre-trained model trades clean
accuracy for certified accuracy, and a user who hands us a working classifier must not get back a useless one.

The guard holds out the last ``n`` training images (never the test set, never trained on). Before the first
epoch it measures their clean error (the model as handed over); after every epoch, before the checkpoint, it
measures it again. While the error stays within ``tolerance`` percentage points of the starting one, that
epoch's weights become the fallback; the first epoch that exceeds it stops training and restores the fallback
(the starting weights if no epoch passed). The fallback and the verdict live in ``trainer.extra["guard"]``,
so they are in every checkpoint and a resumed run continues (or stays stopped) exactly as it would have.

With ``keep_best`` (finetune's default) the guard also measures the held-out images' certified error at the
evaluation ε (the report's certifiers, cheapest first; a misclassified image is never certified), before the
first epoch and after every epoch that passes the clean check. The fallback is then the passing epoch with the
lowest certified error (a tie goes to the later one), the starting weights included, and after the last epoch
those weights are what training hands back. Without it a short fine-tune of a model already trained for its ε
handed back a worse one: the bundled model's demo fine-tune cost 2.7 points of certified error on its test
images (session 16), with every method tried. Held-out selection cannot promise the test set will agree, but it
never hands back weights that did worse than the start on the images it measured.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from toolkit.report.verdicts import SOURCE, stop_message


@dataclass
class CleanGuard:
    x: torch.Tensor
    y: torch.Tensor
    tolerance: float        # percentage points of clean error above the starting one
    batch_size: int = 500
    keep_best: bool = False  # select the passing epoch with the lowest held-out certified error
    eps: float = 0.0         # ... at this ε
    methods: tuple = ("ibp",)  # ... under these certifiers, cheapest first
    source: str = SOURCE     # what the images are, for the messages

    def clean_error(self, graph) -> float:
        """Clean error in % on the held-out images, in eval mode (the training mode is restored)."""
        return _error(self._held_out(graph, lambda g, xb, yb, logits: logits.argmax(1) == yb))

    def cert_error(self, graph) -> float:
        """Certified error in % on the held-out images at ``eps``: an image counts as certified when it is
        classified correctly and one of ``methods`` certifies it, counted as certify's cascade counts (its
        float64 recheck of borderline certificates included; NaN/inf bounds never certify)."""
        return _error(self._held_out(graph, self._certified))

    def _certified(self, graph, xb, yb, logits):
        from toolkit.certify.core import checked_margins
        from toolkit.spec import InputSet, label_column_ignored

        cert = torch.zeros(len(yb), dtype=torch.bool, device=yb.device)
        for m in self.methods:
            rows = ((logits.argmax(1) == yb) & ~cert).nonzero().flatten()
            if not rows.numel():
                break
            inp = InputSet.from_eps(xb[rows], self.eps, clip=graph.input_spec.value_range)
            lb = checked_margins(graph, inp, yb[rows], m, {}, logits[rows])
            cert[rows] = (label_column_ignored(lb, yb[rows]) > 0).all(1)
        return cert

    def _held_out(self, graph, judge) -> torch.Tensor:
        """``judge(graph, x, y, logits)`` per held-out batch, in eval mode without gradients (the training mode
        is restored); the per-image verdicts on the CPU."""
        was_training = graph.training
        graph.eval()
        dev = next(graph.parameters()).device
        out = []
        with torch.no_grad():
            for i in range(0, len(self.x), self.batch_size):
                xb, yb = self.x[i:i + self.batch_size].to(dev), self.y[i:i + self.batch_size].to(dev)
                out.append(judge(graph, xb, yb, graph(xb).reshape(len(xb), -1)).cpu())
        graph.train(was_training)
        return torch.cat(out)

    def start(self, trainer) -> None:
        """Record the starting error and weights (once: a resumed run keeps its stored ones)."""
        if "guard" not in trainer.extra:
            g = {"start_clean_err": self.clean_error(trainer.graph), "n": len(self.x),
                 "tolerance": float(self.tolerance), "best_epoch": 0, "best_state": _cpu_state(trainer.graph),
                 "stopped_at": None, "stopped_clean_err": None, "keep_best": bool(self.keep_best),
                 "source": self.source}
            if self.keep_best:
                g["start_cert_err"] = g["best_cert_err"] = self.cert_error(trainer.graph)
                g.update(eps=float(self.eps), methods=list(self.methods), kept_epoch=None)
            trainer.extra["guard"] = g

    def __call__(self, trainer, metrics) -> None:
        """An epoch check (runs before the epoch's checkpoint): pass, or stop and roll back; with keep_best,
        after the last epoch, hand back the best passing epoch's weights."""
        g = trainer.extra["guard"]
        err = self.clean_error(trainer.graph)
        metrics["guard_clean_err"] = err
        if err > g["start_clean_err"] + g["tolerance"]:
            trainer.graph.load_state_dict(g["best_state"])
            g["stopped_at"], g["stopped_clean_err"] = trainer.epoch, err
            trainer.stop(stop_message(g))
            return
        if not g.get("keep_best"):
            g["best_epoch"], g["best_state"] = trainer.epoch, _cpu_state(trainer.graph)
            return
        cert = metrics["guard_cert_err"] = self.cert_error(trainer.graph)
        if cert <= g["best_cert_err"]:
            g["best_epoch"], g["best_state"], g["best_cert_err"] = trainer.epoch, _cpu_state(trainer.graph), cert
        if trainer.epoch >= trainer.epochs:
            trainer.graph.load_state_dict(g["best_state"])
            g["kept_epoch"] = g["best_epoch"]


def summary(extra: dict) -> dict | None:
    """The guard's verdict for reports (no weights), or None when the run had no guard."""
    g = extra.get("guard")
    return None if g is None else {k: v for k, v in g.items() if k != "best_state"}


def _error(passed: torch.Tensor) -> float:
    """Percent of images that did not pass, from integer counts (no float32 mean: 1.4, not 1.3999998)."""
    return 100.0 * int((~passed).sum()) / len(passed)


def _cpu_state(graph) -> dict:
    return {k: v.detach().cpu().clone() for k, v in graph.state_dict().items()}

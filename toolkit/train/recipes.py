"""Fine-tuning recipes (issue 16): defaults for certified fine-tuning of a pre-trained external model.

A model handed to ``finetune`` already works: it has a clean accuracy worth keeping and is often certifiable at
some radius already. So fine-tuning uses (``toolkit.train.finetune``):

* a lower learning rate (1e-4 instead of training's 1e-3) and 1 epoch unless told otherwise;
* an ε ramp that starts at the model's current certified radius (``--eps-start auto``, the default):
  starting at 0 would spend the first steps on radii the model already certifies, and jumping straight to
  the target ε can wreck a model whose radius is far below it. The radius is the median over the first
  ``RADIUS_N`` training images of the largest ε (bisection, ``RADIUS_ITERS`` halvings of [0, ε]) at which the
  training method's own bound certifies the image (0 for a misclassified one); a short ramp
  (``max(1, epochs // 2)`` epochs) then takes it to ε;
* the clean-accuracy guard (``toolkit.train.guard``, 2 percentage points on 500 held-out training images);
* keep-best (same module): of the starting weights and every epoch the guard passes, the one with the lowest
  certified error on those held-out images is handed back, so a fine-tune that does not help returns the
  model it was given rather than a worse one.
"""
from __future__ import annotations

import torch

from toolkit.spec import InputSet

#: Images and bisection steps for the starting radius (8 halvings: within ε/256).
RADIUS_N, RADIUS_ITERS = 200, 8
#: The bound each training method trains against, used for the starting radius.
TRAIN_BOUND = {"cp": "fastlin", "crown-ibp": "crown-ibp"}


def certified_radius(graph, x, y, eps_max: float, method: str, iters: int = RADIUS_ITERS,
                     batch_size: int = 100) -> torch.Tensor:
    """Per image, the largest radius in [0, eps_max] (to eps_max / 2^iters, rounded down) at which ``method``
    certifies it; 0 where the model misclassifies the centre."""
    from toolkit.bounds import compute_bounds

    dev = next(graph.parameters()).device
    out = []
    was_training = graph.training
    graph.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
            ok = graph(xb).reshape(len(xb), -1).argmax(1) == yb
            lo, hi = torch.zeros(len(xb), dtype=xb.dtype, device=dev), torch.full((len(xb),), float(eps_max),
                                                                                  dtype=xb.dtype, device=dev)
            for _ in range(iters):
                mid = (lo + hi) / 2
                inp = InputSet.from_eps(xb, mid, clip=graph.input_spec.value_range)
                # as certify runs it (IBP intersection, no optimum); certified() counts NaN/inf as not
                cert = compute_bounds(graph, inp, None, method, labels=yb, intersect_ibp=True,
                                      optimum=False).certified()
                lo, hi = torch.where(cert, mid, lo), torch.where(cert, hi, mid)
            out.append(torch.where(ok, lo, torch.zeros_like(lo)).cpu())
    graph.train(was_training)
    return torch.cat(out)


def start_radius(graph, x, y, eps_max: float, train_method: str) -> float:
    """The ramp's starting ε: the median certified radius of the first ``RADIUS_N`` images under the bound
    the method trains against (IBP for the IBP family)."""
    n = min(RADIUS_N, len(x))
    r = certified_radius(graph, x[:n], y[:n], eps_max, TRAIN_BOUND.get(train_method, "ibp"))
    return float(r.median()) if n else 0.0

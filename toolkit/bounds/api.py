"""Python API behind ``tightcert bounds``: batched margin and logit bounds for arrays of inputs."""
from __future__ import annotations

import numpy as np
import torch

from toolkit.errors import BadInputError
from toolkit.spec import InputSet, label_column_ignored, scatter_margins

from .methods import bound_method
from .precision import recheck_float64


def bounds_for_inputs(graph, x: np.ndarray, labels=None, eps=0.0, method="crown", clip=(0.0, 1.0),
                      device="cpu", batch_size=100, dtype=torch.float32, **opts) -> dict:
    """Returns numpy arrays: ``margin_lb`` (N,K) lower bounds of min f_y − f_j (0 in column y),
    ``logit_lb``/``logit_ub`` (N,K), ``certified`` (N,) and ``labels`` (clean predictions by default)."""
    method = bound_method(method, **opts)   # names and options checked before any work
    if method.probabilistic:
        raise BadInputError(f"{method.name} bounds are probabilistic (random projections) and cannot certify; "
                            "use it for training only")
    x = np.asarray(x)
    want = tuple(graph.input_spec.shape)
    if x.ndim == len(want):
        x = x[None]
    if tuple(x.shape[1:]) != want:
        raise BadInputError(f"inputs have per-sample shape {tuple(x.shape[1:])}, the model expects {want}")
    if not np.isfinite(x).all():
        raise BadInputError("inputs contain NaN or inf")
    graph = graph.to(device=device, dtype=dtype).eval()
    xt = torch.as_tensor(x, dtype=dtype, device=device)
    eps_t = torch.as_tensor(eps, dtype=dtype)
    if eps_t.dim() == 1 and eps_t.numel() == xt.shape[0]:
        per_sample = eps_t.to(device)
    else:
        per_sample = None
    with torch.no_grad():
        pred = torch.cat([graph(xt[i:i + batch_size]).reshape(len(xt[i:i + batch_size]), -1).argmax(1)
                          for i in range(0, len(xt), batch_size)])
    y = pred if labels is None else torch.as_tensor(np.asarray(labels), device=device).long().reshape(-1)
    if y.shape[0] != xt.shape[0]:
        raise BadInputError(f"{y.shape[0]} labels for {xt.shape[0]} inputs")
    k = graph.output_size()
    out = {"margin_lb": [], "logit_lb": [], "logit_ub": [], "certified": []}
    for i in range(0, len(xt), batch_size):
        xb, yb = xt[i:i + batch_size], y[i:i + batch_size]
        e = per_sample[i:i + batch_size] if per_sample is not None else eps_t.to(device)
        inp = InputSet.from_eps(xb, e, clip=clip)
        with torch.no_grad():  # alpha-crown enables autograd for its own slopes only
            res = method.bound(graph, inp, labels=yb, optimum=False)
            eye = torch.eye(k, dtype=dtype, device=device).expand(len(xb), k, k)
            logits = method.bound(graph, inp, eye, bound_upper=True, optimum=False)
            # float32 certificates within rounding of 0 count only if float64 confirms them
            margins = recheck_float64(
                lambda g, sub, ys: scatter_margins(method.bound(g, sub, labels=ys, optimum=False).lower, ys, k),
                graph, inp, yb, scatter_margins(res.lower, yb, k), graph(xb).reshape(len(xb), -1))
        out["margin_lb"].append(margins)
        out["certified"].append((label_column_ignored(margins, yb) > 0).all(1))  # NaN is never > 0
        out["logit_lb"].append(logits.lower.detach())
        out["logit_ub"].append(logits.upper.detach())
    arrays = {name: torch.cat(v).cpu().numpy() for name, v in out.items()}
    arrays["labels"] = y.cpu().numpy()
    return arrays


def check_writable(path) -> None:
    """Raise before any computation when ``path`` cannot be written (missing or read-only folder)."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BadInputError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write {path}: folder {folder} is not writable")


def save_bounds(path, arrays: dict) -> None:
    """``bounds_for_inputs``' arrays as an ``.npz`` (temporary file + rename: never half-written)."""
    from toolkit.fileio import atomic_path

    check_writable(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)

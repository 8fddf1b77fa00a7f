"""Argument helpers shared by subcommands (no torch at import time)."""
from __future__ import annotations


def float_list(text: str):
    """'0.1,0.2' -> [0.1, 0.2] (used for --eps, --mean, --std)."""
    try:
        return [float(v) for v in str(text).replace(" ", ",").split(",") if v != ""]
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}")


def add_device(p):
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default: cpu)")


def add_seed(p):
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def add_alpha(p):
    p.add_argument("--alpha-iters", type=non_negative_int, default=20, help="alpha-CROWN iterations (default: 20)")
    p.add_argument("--alpha-scope", choices=("all", "final"), default="all",
                   help="alpha-CROWN slopes to optimise: 'all' also re-bounds the intermediate layers with slopes "
                        "of their own (tighter, costlier), 'final' only the final pass (default: all)")


def add_norm(p):
    p.add_argument("--mean", type=float_list, default=None,
                   help="per-channel mean to prepend as a Normalize node (normalisation outside the graph)")
    p.add_argument("--std", type=float_list, default=None, help="per-channel std to go with --mean")

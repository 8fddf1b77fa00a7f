"""tightcert bounds: sound bounds for a batch of inputs, written to an .npz file."""
from __future__ import annotations

from .common import add_alpha, add_device, add_norm, float_list

NAME = "bounds"
HELP = "compute sound margin and logit bounds for inputs in an .npy file"
DESCRIPTION = """Compute sound bounds of an ONNX classifier over l-inf balls around the given inputs.

Writes OUT.npz with margin_lb (N,K): a lower bound of min f_y(x') - f_j(x') over the ball (0 in column y),
logit_lb / logit_ub (N,K), certified (N,) and labels (N,). Labels default to the clean predictions.
eps is in the model's input units (pixels in [0,1] unless the model's normalisation lives outside it and
--mean/--std are not given). Methods: ibp, crown-ibp, fastlin, crown, alpha-crown."""


def add_arguments(p):
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--inputs", required=True, help=".npy array of inputs (N, *input_shape) or one input")
    p.add_argument("--labels", help=".npy array of integer labels (default: the clean predictions)")
    p.add_argument("--eps", required=True, type=float_list,
                   help="l-inf radius: one value, or one per input (comma-separated)")
    p.add_argument("--method", default="crown", help="bound method (default: crown)")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--clip", nargs=2, type=float, metavar=("LO", "HI"), default=(0.0, 1.0),
                      help="valid input box intersected with the ball (default: 0 1)")
    clip.add_argument("--no-clip", action="store_true", help="do not intersect the ball with a box")
    add_norm(p)
    add_alpha(p)
    p.add_argument("--batch-size", type=int, default=100)
    add_device(p)
    p.add_argument("--out", required=True, help="output .npz path")


def run(args):
    from toolkit.bounds.api import bounds_for_inputs, check_writable, save_bounds
    from toolkit.errors import BadInputError
    from toolkit.ir.onnx_import import import_onnx

    x = _load_npy(args.inputs, "inputs")
    labels = _load_npy(args.labels, "labels") if args.labels else None
    eps = args.eps[0] if len(args.eps) == 1 else args.eps
    if any(e < 0 or e != e for e in args.eps):
        raise BadInputError(f"--eps must be >= 0, got {args.eps}")
    check_writable(args.out)  # before the computation, not after it
    graph = import_onnx(args.model, mean=args.mean, std=args.std)
    clip = None if args.no_clip else tuple(args.clip)
    alpha = args.method == "alpha-crown"
    opts = {"alpha_iters": args.alpha_iters, "alpha_scope": args.alpha_scope} if alpha else {}
    arrays = bounds_for_inputs(graph, x, labels, eps, args.method, clip, args.device, args.batch_size, **opts)
    save_bounds(args.out, arrays)
    n, cert = len(arrays["certified"]), int(arrays["certified"].sum())
    print(f"{args.method}: certified {cert}/{n}; wrote {args.out}")
    return 0


def _load_npy(path, what):
    import numpy as np

    from toolkit.errors import BadInputError

    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise BadInputError(f"{what} file not found: {path}")
    except (ValueError, OSError) as e:
        raise BadInputError(f"cannot read {what} file {path}: {e}")

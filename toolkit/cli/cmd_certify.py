"""tightcert certify: clean / PGD / certified errors of an ONNX classifier, with an HDF5 report."""
from __future__ import annotations

import argparse

from .common import add_alpha, add_device, add_norm, add_seed, float_list

NAME = "certify"
HELP = "certify an ONNX classifier on a dataset: clean, PGD and certified error; HDF5 report"
DESCRIPTION = """Certify an ONNX classifier under l-inf balls on a dataset.

For every sample: the clean prediction, a PGD attack (margin loss over the same spec as the bounds, random
start, kept inside ball ∩ valid box), and for each bound method the certified flag and margin lower bounds.
Methods run cheapest first (ibp, crown-ibp, fastlin, crown, alpha-crown); a sample certified by a cheaper
method or broken by PGD is not recomputed by the dearer ones (the cheapest runs on every sample, so that its
certificates are all checked against PGD). A sample certified yet broken by PGD, or a lower bound above a
value attained in the input set, stops the run (a soundness bug).

--eps 0.1,0.2 is a sweep: one run per ε. An .npz with per-sample lo/hi boxes (e.g.
../shared/models/*/points.npz) is certified over those boxes instead of ε-balls.

The report (--out) is written as OUT.partial while running and renamed to OUT when every run finished;
running the same command again resumes an interrupted run without recomputing finished samples."""


def _indices(text):
    """'3,5,10:20' -> [3, 5, 10, ..., 19] (ranges are start:stop, stop excluded)."""
    out = []
    try:
        for part in str(text).replace(" ", ",").split(","):
            if not part:
                continue
            if ":" in part:
                a, b = part.split(":", 1)
                out.extend(range(int(a), int(b)))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sample indices: {text!r}") from None
    return out


def add_arguments(p):
    p.add_argument("model", help="ONNX model file")
    p.add_argument("--data", required=True, help="mnist, cifar10, mnist_test_1000, ... or a path to an .npz")
    p.add_argument("--data-root", default=None, help="folder holding the datasets (default: $TIGHTCERT_DATA "
                                                     "or ../shared/data)")
    p.add_argument("--split", default="test", choices=("train", "test"), help="dataset split (default: test)")
    sel = p.add_mutually_exclusive_group()
    sel.add_argument("--n", type=int, default=None, help="certify the first N samples")
    sel.add_argument("--indices", type=_indices, default=None, help="sample positions: 3,5,10:20 (stop excluded)")
    p.add_argument("--eps", type=float_list, default=None,
                   help="l-inf radius, or a comma-separated sweep 0.1,0.2,0.3 (model input units: [0,1] pixels "
                        "unless normalisation lives outside the model); not needed for data with boxes/eps")
    add_norm(p)
    p.add_argument("--method", default="crown-ibp",
                   help="comma-separated bound methods: ibp, crown-ibp, fastlin, crown, alpha-crown "
                        "(default: crown-ibp)")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--clip", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                      help="valid input box intersected with the ball (default: the model's input range)")
    clip.add_argument("--no-clip", action="store_true", help="do not intersect the ball with a box")
    p.add_argument("--pgd-steps", type=int, default=100, help="PGD steps per restart (default: 100)")
    p.add_argument("--pgd-restarts", type=int, default=1, help="PGD random restarts (default: 1)")
    p.add_argument("--pgd-step-size", type=float, default=None,
                   help="PGD l-inf step (default: 2.5·radius/steps per coordinate)")
    add_alpha(p)
    p.add_argument("--batch-size", type=int, default=256, help="samples per batch (default: 256)")
    add_device(p)
    add_seed(p)
    p.add_argument("--out", default=None, help="HDF5 report to write (resumes OUT.partial when present)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="certify only shard K of N (1-based): the samples at positions K-1, K-1+N, ... of the "
                        "selection, into their own --out; join the shards with `tightcert merge`")
    p.add_argument("--format", default="github", help="table format passed to tabulate: github, latex, plain, ...")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_format(fmt):
    from tabulate import tabulate_formats

    from toolkit.errors import BadInputError

    if fmt not in tabulate_formats:
        raise BadInputError(f"unknown table format {fmt!r}; choose from {', '.join(sorted(tabulate_formats))}")


def run(args):
    import os
    import sys

    from toolkit.errors import BadInputError

    check_format(args.format)
    if (args.mean is None) != (args.std is None):
        raise BadInputError("--mean and --std go together")
    clip = None if args.no_clip else (tuple(args.clip) if args.clip else "model")
    try:
        res = _certify(args, clip)
    except KeyboardInterrupt:
        if args.out and os.path.exists(args.out + ".partial"):
            print(f"{NAME}: partial results kept in {args.out}.partial; run the same command again to resume",
                  file=sys.stderr)
        raise
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    print(res.table(args.format))
    if res.out is not None:
        print(f"\nreport: {res.out}")
    return 0


def _certify(args, clip):
    from toolkit.certify import certify_model

    return certify_model(args.model, args.data, args.eps, args.method, data_root=args.data_root,
                         split=args.split, n=args.n, indices=args.indices, mean=args.mean, std=args.std,
                         out=args.out, clip=clip, pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
                         pgd_step_size=args.pgd_step_size, batch_size=args.batch_size, device=args.device,
                         seed=args.seed,
                         method_opts={"alpha_iters": args.alpha_iters, "alpha_scope": args.alpha_scope},
                         progress=False if args.no_progress else None, shard=args.shard)

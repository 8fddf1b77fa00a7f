"""tightcert train: certified training of a model-zoo architecture with the tightness regularizers."""
from __future__ import annotations

import argparse
import sys

from .common import add_device, add_seed, float_list

#: ``toolkit.train.methods.METHODS``, spelled out so that building the parser imports no torch (a test checks).
TRAIN_METHODS = ("cp", "crown-ibp", "ibp", "mtl-ibp", "exp-ibp", "cc-ibp", "sabr")

NAME = "train"
HELP = ("train a model-zoo architecture with certified training (CP, CROWN-IBP, IBP, SABR, MTL/Exp/CC-IBP) + "
        "regularizers d and r")
DESCRIPTION = """Certified training from scratch (Zhu et al., Eq. 4):

    loss = CE(-p*, y) + lambda * mean_batch sum_t d_t + gamma * mean_batch sum_t r_t

p* are the margin lower bounds of the method: cp = Fast-Lin / Wong-Kolter (exact, or Cauchy random
projections with --proj K), crown-ibp = IBP + CROWN mixed by beta (CROWN-IBP schedules), ibp = interval bounds.
sabr (IBP over a small box around a PGD point, --sabr-lambda) and mtl-ibp / exp-ibp / cc-ibp (the adversarial
and the IBP loss mixed by --mtl-alpha) replace the robust CE with their own; --ibp-init and --warmup-reg add
Shi et al. 2021's fast-IBP initialisation and warm-up regularizers to any IBP-based method. d and r need a
relaxation optimum: they are refused for ibp, sabr and the mixtures. d (--reg-d) is the gap between the real
network at the relaxation's optimal input and the relaxed optimum; r (--reg-r) the distance of the real
pre-activations from the relaxation's tight points. eps ramps from --eps-start to --eps over --ramp epochs
after --warmup epochs.

Writes PATH.onnx (the trained model, training provenance in its metadata), PATH.h5 (per-epoch metrics in
/train, the before/after clean, PGD and certified error on the test set) and PATH.ckpt/ (a checkpoint per
epoch: --resume continues a killed run with the same result as an uninterrupted one)."""


def add_training_arguments(p, finetune: bool = False):
    m = p.add_argument_group("method")
    m.add_argument("--method", default="cp", choices=TRAIN_METHODS,
                   help="certified loss (default: cp); mtl-ibp, exp-ibp, cc-ibp (De Palma et al. 2024's expressive "
                        "losses) and sabr (Müller et al. 2023) mix in an adversarial point found by PGD")
    m.add_argument("--reg-d", dest="lam", type=float, default=0.0, metavar="LAMBDA", help="weight of regularizer d (default: 0)")
    m.add_argument("--reg-r", dest="gamma", type=float, default=0.0, metavar="GAMMA", help="weight of regularizer r (default: 0)")
    m.add_argument("--r-norm", default="none", choices=("none", "width", "layer-mean"),
                   help="r normalisation (paper open, spec U1): none (default), width (divide by u-l), "
                        "layer-mean (mean over each layer's unstable neurons)")
    m.add_argument("--r-squared", action="store_true", help="squared instead of absolute distances in r")
    m.add_argument("--reg-agg", dest="aggregate", default="sum", choices=("sum", "mean"),
                   help="sum (default, Eq. 4) or mean of d_t and r_t over the classes t != y")
    m.add_argument("--proj", type=int, default=0, metavar="K",
                   help="cp only: Cauchy random projections of dimension K for the intermediate bounds "
                        "(Wong et al.; 0 = exact Fast-Lin, default)")
    m.add_argument("--beta-final", type=float, default=0.0,
                   help="crown-ibp: final beta; beta = 1 - (1 - beta_final) * eps/eps_max (default: 0)")
    m.add_argument("--kappa-final", type=float, default=None,
                   help="mix in the natural CE: kappa = 1 - (1 - kappa_final) * eps/eps_max (default: off)")
    m.add_argument("--r-coupling", default="beta-positive", choices=("beta-positive", "beta-weighted", "always"),
                   help="crown-ibp: how r meets beta (spec U7): only while the CROWN pass runs, beta > 0 "
                        "(default); weighted by beta; or always (CROWN pass kept for r)")
    m.add_argument("--loss-fusion", action="store_true",
                   help="crown-ibp: bound the cross-entropy itself (one spec row per sample instead of K-1: the "
                        "CROWN pass costs about a (K-1)th; auto_LiRPA's loss fusion) instead of the CE of per-class "
                        "margin bounds (the paper's loss); not with --reg-d/--reg-r, which need per-class optima")
    m.add_argument("--mtl-alpha", type=float, default=None,
                   help="mtl-ibp / exp-ibp / cc-ibp: weight α of the IBP term against the adversarial one (default: "
                        "0.5, the MTL-IBP authors' MNIST 0.3 script; their code shares it between the three and "
                        "tunes it per task)")
    m.add_argument("--sabr-lambda", type=float, default=None,
                   help="sabr: small-box radius as a fraction of eps (default: 0.6, the SABR/TAPS authors' MNIST "
                        "0.3 script)")
    m.add_argument("--attack-steps", type=int, default=None,
                   help="mtl-ibp, exp-ibp, cc-ibp / sabr: PGD steps for the adversarial point (default: 1 / 8)")
    if not finetune:
        m.add_argument("--ibp-init", action="store_true",
                       help="Shi et al. 2021's IBP initialisation (weights N(0, 2π/fan_in²); keeps interval bounds "
                            "from exploding with depth)")
    m.add_argument("--warmup-reg", type=float, default=0.0, metavar="LAMBDA",
                   help="IBP-based methods: weight of Shi et al.'s warm-up regularizers (tight, balanced ReLU "
                        "boxes), fading to 0 at the end of the eps ramp (default: 0 = off; they used 0.5)")
    m.add_argument("--warmup-tol", type=float, default=0.5, help="their tolerance (default: 0.5)")
    e = p.add_argument_group("epsilon")
    e.add_argument("--eps", type=float, required=True, help="training eps (l-inf, model input units)")
    e.add_argument("--eval-eps", type=float, default=None, help="eps of the before/after evaluation (default: --eps)")
    e.add_argument("--allow-larger-train-eps", action="store_true",
                   help="allow --eps above --eval-eps (the paper trains at 0.4 for a test eps of 0.3)")
    e.add_argument("--eps-start", type=_eps_start, default="auto" if finetune else 0.0,
                   help="eps during warm-up and at the ramp start, or 'auto': the model's median certified radius "
                        "on 200 training images under the training bound (default: " +
                        ("auto" if finetune else "0") + ")")
    e.add_argument("--warmup", type=int, default=0, help="epochs at --eps-start before the ramp (default: 0)")
    e.add_argument("--ramp", type=int, default=None,
                   help="epochs of the eps ramp (default: half the epochs" + (", at least 1)" if finetune else ")"))
    e.add_argument("--eps-schedule", default="linear", choices=("linear", "smoothed"), help="ramp shape")
    o = p.add_argument_group("optimisation")
    o.add_argument("--optimizer", default="adam", choices=("adam", "sgd"))
    o.add_argument("--lr", type=float, default=1e-4 if finetune else 1e-3,
                   help=f"learning rate (default: {1e-4 if finetune else 1e-3:g})")
    o.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default: 0.9)")
    o.add_argument("--weight-decay", type=float, default=0.0)
    o.add_argument("--lr-schedule", default="step", choices=("constant", "step", "multistep"),
                   help="step (default): x --lr-decay every --lr-step epochs from --lr-decay-start; multistep: "
                        "x --lr-decay at each of --lr-milestones")
    o.add_argument("--lr-decay", type=float, default=0.5, help="decay factor (default: 0.5)")
    o.add_argument("--lr-step", type=int, default=10, help="epochs between decays (default: 10)")
    o.add_argument("--lr-decay-start", type=int, default=None, help="first epoch of decay (default: end of the ramp)")
    o.add_argument("--lr-milestones", type=float_list, default=(), help="epochs for multistep, e.g. 130,190")
    o.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (0 = off, default)")
    if finetune:
        o.add_argument("--clean-guard", type=float, default=2.0, metavar="POINTS",
                       help="clean-accuracy guard: hold out --guard-n training images; stop and roll back to the "
                            "last good epoch when their clean error rises more than POINTS percentage points "
                            "above the starting model's (default: 2)")
        o.add_argument("--no-clean-guard", dest="clean_guard", action="store_const", const=None,
                       help="fine-tune without the guard (all training images are trained on)")
    else:
        o.add_argument("--clean-guard", type=float, default=None, metavar="POINTS",
                       help="clean-accuracy guard as in finetune (default: off)")
    o.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                   help="hand back the epoch (the starting weights included) with the lowest certified error on "
                        "the guard's held-out images at --eval-eps under the --eval-method certifiers, not the "
                        f"last one (needs the guard; default: {'on with the guard' if finetune else 'off'})")
    o.add_argument("--guard-data", default=None, metavar="FILE.npz",
                   help="validation images for the guard (the first --guard-n of the file) instead of holding out "
                        "training images; every training image is then trained on")
    o.add_argument("--guard-n", type=int, default=500,
                   help="images the guard measures: held-out training images (at most a fifth of them), or the "
                        "first of --guard-data (default: 500)")
    o.add_argument("--batch-size", type=int, default=50, help="training batch size (default: 50)")
    o.add_argument("--epochs", type=int, default=1 if finetune else 20,
                   help=f"epochs (default: {1 if finetune else 20})")
    add_seed(o)
    add_device(o)
    d = p.add_argument_group("data and evaluation")
    d.add_argument("--data", default=None if finetune else "mnist",
                   help="dataset (train split for training, test split for evaluation): mnist, cifar10"
                        + (" (default: from the model's input size)" if finetune else " (default: mnist)"))
    d.add_argument("--data-root", default=None, help="dataset folder (default: $TIGHTCERT_DATA or ../shared/data)")
    d.add_argument("--train-data", default=None, help="training set instead: a dataset name or an .npz")
    d.add_argument("--test-data", default=None, help="evaluation set instead: a dataset name or an .npz")
    d.add_argument("--train-n", type=int, default=None, help="train on the first N samples only")
    d.add_argument("--test-n", type=int, default=None, help="evaluate on the first N test samples only")
    d.add_argument("--eval-method", dest="eval_methods", type=_method_list, default=None,
                   help="certifiers for the before/after table, comma-separated (default: fastlin for cp, "
                        "ibp,crown-ibp for crown-ibp, ibp for ibp)")
    d.add_argument("--pgd-steps", type=int, default=100, help="PGD steps of the evaluation (default: 100)")
    d.add_argument("--eval-batch-size", type=int, default=200,
                   help="evaluation batch size, also of the guard's held-out checks (default: 200)")
    w = p.add_argument_group("output")
    w.add_argument("--out", required=True, help="PATH.onnx: the improved model (report PATH.h5, checkpoints "
                                                "PATH.ckpt/)")
    w.add_argument("--report", default=None, help="HDF5 report path (default: PATH.h5)")
    w.add_argument("--resume", action="store_true", help="continue from the last checkpoint in PATH.ckpt/")
    w.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (one line per epoch instead)")


def add_arguments(p):
    p.add_argument("model", help="model-zoo architecture: mlp_2x100, mlp_256x2, small, large, xlarge, "
                                 "cnn_2layer_w{w}_l{l}, cnn_3layer_fixed_k{3|5}_w{w}, cnn_4layer_w{w}_l{l}")
    add_training_arguments(p)


def _eps_start(text):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def _method_list(text):
    return [m for m in text.replace(" ", ",").split(",") if m]


def config_kwargs(args) -> dict:
    """argparse namespace → keyword arguments of ``toolkit.train.train`` / ``finetune``: every
    ``TrainConfig`` field the parser defines (each option's dest is its field name, so an option is declared
    once here and once in the config), less the ones passed on their own (eps, out, data). An option left
    unset (None) whose field has a default of its own keeps that default (e.g. --mtl-alpha)."""
    from dataclasses import MISSING, fields

    from toolkit.train.api import TrainConfig

    out = {}
    for f in fields(TrainConfig):
        if f.name in ("eps", "out", "data") or not hasattr(args, f.name):
            continue
        v = getattr(args, f.name)
        if v is None and f.default not in (None, MISSING):
            continue
        out[f.name] = v
    return out


def print_outcome(res) -> None:
    print(res.table)
    print(f"model:  {res.onnx_path}\nreport: {res.report_path}")


def epoch_logger(trainer, m) -> None:
    """One line per epoch (used with --no-progress, e.g. in logs)."""
    fmt = lambda v, pct=False: "-" if v != v else (f"{100 * v:.2f}%" if pct else f"{v:.4g}")
    print(f"epoch {int(m['epoch'])}/{trainer.epochs}: loss={fmt(m['loss'])} CE={fmt(m['ce'])} d={fmt(m['d'])} "
          f"r={fmt(m['r'])} rob.err={fmt(m['robust_err'], True)} clean.err={fmt(m['clean_err'], True)} "
          f"eps={m['eps']:.4g} lr={m['lr']:.3g} ({m['time_s']:.0f}s)", file=sys.stderr, flush=True)


def run(args) -> int:
    from toolkit.train.api import train

    kw = config_kwargs(args)
    callbacks = [] if args.progress else [epoch_logger]
    res = train(args.model, eps=args.eps, out=args.out, dataset=args.data, callbacks=callbacks, **kw)
    print_outcome(res)
    return 0

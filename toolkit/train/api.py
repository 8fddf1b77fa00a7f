"""``train`` (a model-zoo architecture from scratch) and ``finetune`` (an imported ONNX model): the Python API
behind ``tightcert train`` / ``tightcert finetune``.

Flow: validate every setting, load model and data, run the loss once on two samples (unsupported ops and
missing classification outputs fail here) and export a throw-away ONNX copy, all before anything is
written; then, in ``PATH.ckpt/``: an epoch-0 checkpoint, the "before" evaluation, one checkpoint per epoch,
the "after" evaluation; finally the improved model ``PATH.onnx`` (with the training provenance in its
metadata) and the report ``PATH.h5`` (temp file + rename). ``resume=True`` continues from ``PATH.ckpt/``.

The report holds the certifier's runs ``before_eps<ε>`` and ``after_eps<ε>`` (layout: ``toolkit.report.h5``)
and a group ``/train`` written here:

    /train                 attrs: command ("train" | "finetune"), model, model_sha256, method, config (JSON),
                                  eval_eps, eval_methods (JSON), n_train, runs (JSON [before, after]),
                                  tightcert_version, torch_version, finished_at, train_time_s
    /train/epochs/<m>      (E,) float64 per-epoch metrics, m in trainer.EPOCH_METRICS (train-set means;
                                  robust_err under the training bound; d, r = batch means of Σ_t; NaN = not
                                  computed that epoch)
    /train/before_after/<c>  (2,) float64, rows attrs["rows"] = ["before", "after"]; c = clean_err, pgd_err,
                                  certified_err/<method> (in %, cumulative over the eval cascade as in the runs)

ε is in the model's input space ([0, 1] pixels for zoo models and for imports with --mean/--std).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import tempfile
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch

from toolkit import __version__
from toolkit.errors import BadInputError, BadModelError
from toolkit.fileio import OutputBusyError, OutputLock, atomic_path, check_not_busy
from toolkit.report.verdicts import verdict_text as guard_verdict_text

from .guard import CleanGuard, summary as guard_summary
from .recipes import start_radius
from .methods import (MTL_ALPHA, PURE_IBP, SABR_LAMBDA, METHODS, RegConfig, WarmupConfig, check_loss_fusion,
                      make_loss)
from .schedules import BetaSchedule, EpsSchedule, KappaSchedule, LRSchedule
from .trainer import CKPT_NAME, EPOCH_METRICS, Trainer

OPTIMIZERS = ("adam", "sgd")
#: Exact certifiers used for the before/after table unless eval_methods is given (spec §9.5: the
#: training method's exact relaxation; CROWN-IBP models are evaluated with IBP and CROWN-IBP bounds).
DEFAULT_EVAL = {"cp": ["fastlin"], "crown-ibp": ["ibp", "crown-ibp"], "ibp": ["ibp"], "mtl-ibp": ["ibp", "crown-ibp"],
                "exp-ibp": ["ibp", "crown-ibp"], "cc-ibp": ["ibp", "crown-ibp"], "sabr": ["ibp", "crown-ibp"]}
#: Datasets whose class count is known by name.
N_CLASSES = {"mnist": 10, "cifar10": 10, "cifar10_exact": 10, "cifar10_jpeg": 10, "mnist_test_1000": 10}
REPORT_NAME = "report.h5"


@dataclass
class TrainConfig:
    """Every setting of a training run (the CLI flags). Field names are the API's keyword arguments."""

    eps: float
    out: str
    method: str = "cp"
    lam: float = 0.0                 # --reg-d λ
    gamma: float = 0.0               # --reg-r γ
    r_norm: str = "none"
    r_squared: bool = False
    aggregate: str = "sum"
    proj: int = 0                    # cp: 0 = exact Fast-Lin, k > 0 = Cauchy projections (cp-proj)
    eval_eps: float | None = None    # default: eps
    allow_larger_train_eps: bool = False
    eps_start: float | str = 0.0     # or "auto": the model's median certified radius (finetune default)
    warmup: int = 0                  # epochs at eps_start
    ramp: int | None = None          # epochs of ramp; default: epochs // 2
    eps_schedule: str = "linear"
    beta_final: float = 0.0
    kappa_final: float | None = None  # None: loss without the natural CE term ("robust")
    r_coupling: str = "beta-positive"
    loss_fusion: bool = False        # crown-ibp: bound the CE itself, one spec row per sample (train.loss)
    mtl_alpha: float = MTL_ALPHA     # mtl-ibp / exp-ibp / cc-ibp: weight α of the IBP term
    sabr_lambda: float = SABR_LAMBDA  # sabr: small-box radius as a fraction of eps
    attack_steps: int | None = None  # mtl-ibp / sabr: PGD steps for the adversarial point (default per method)
    ibp_init: bool = False           # train only: Shi et al. 2021's IBP initialisation (train.ibp_warmup)
    warmup_reg: float = 0.0          # IBP-based methods: weight of Shi et al.'s warm-up regularizers
    warmup_tol: float = 0.5          # their tolerance τ
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "step"
    lr_decay: float = 0.5
    lr_step: int = 10
    lr_decay_start: int | None = None  # default: end of the ε ramp
    lr_milestones: tuple = ()
    grad_clip: float = 0.0
    clean_guard: float | None = None  # finetune default 2.0: stop + roll back past +N points of clean error
    guard_n: int = 500               # images the guard measures (held out: at most a fifth of the training set)
    guard_data: str | None = None    # an .npz of validation images for the guard instead (its first guard_n)
    keep_best: bool = False          # finetune default: hand back the guard's best held-out certified epoch
    batch_size: int = 50
    epochs: int = 20
    seed: int = 0
    device: str = "cpu"
    data: str | None = None          # dataset name (train/test splits) or None (inferred for finetune)
    data_root: str | None = None
    train_data: str | None = None    # overrides: a dataset name or an .npz
    test_data: str | None = None
    train_n: int | None = None
    test_n: int | None = None
    eval_methods: list | None = None
    pgd_steps: int = 100
    eval_batch_size: int = 200
    report: str | None = None        # default: PATH.h5 beside PATH.onnx
    resume: bool = False
    progress: bool = True
    #: Fields that do not change a run's result (paths, progress, device).
    _NOT_SETTINGS: ClassVar[frozenset] = frozenset({"out", "report", "resume", "progress", "device",
                                                     "eval_batch_size", "data_root"})

    @classmethod
    def setting_defaults(cls) -> dict:
        """The default of every result-changing setting (what a checkpoint older than a setting used)."""
        out = {}
        for f in fields(cls):
            if f.default is not MISSING or f.default_factory is not MISSING:
                v = f.default if f.default is not MISSING else f.default_factory()
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return {k: v for k, v in out.items() if k not in cls._NOT_SETTINGS}

    def result_settings(self) -> dict:
        """Settings a resumed run must share with the interrupted one (not paths, progress or device)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if k not in self._NOT_SETTINGS}


@dataclass
class TrainOutcome:
    graph: torch.nn.Module
    history: list
    before: dict
    after: dict
    onnx_path: Path
    report_path: Path
    table: str
    notes: list = field(default_factory=list)
    guard: dict | None = None        # the clean-accuracy guard's verdict (train.guard.summary)


# -- public entry points -----------------------------------------------------------------------------------

def train(model: str, *, eps: float, out, dataset: str = "mnist", callbacks=(), **kw) -> TrainOutcome:
    """Train zoo architecture ``model`` (e.g. "mlp_2x100", "small", "cnn_2layer_w1_l128") from scratch.

    Keyword arguments: the fields of ``TrainConfig``; ``callbacks``: ``f(trainer, epoch_metrics)`` after
    every epoch's checkpoint."""
    from toolkit import zoo

    cfg = _config(eps=eps, out=out, data=dataset, **kw)
    base = {"command": "train", "model": model, "model_sha256": "", "dataset": dataset}

    def build():
        graph = zoo.build(model, _zoo_dataset(dataset, cfg), cfg.seed)
        if cfg.ibp_init:
            from .ibp_warmup import ibp_init

            ibp_init(graph, cfg.seed)
        return graph

    return _run(build, cfg, base, callbacks)


def finetune(model_path, *, eps: float, out, mean=None, std=None, callbacks=(), **kw) -> TrainOutcome:
    """Fine-tune the ONNX classifier at ``model_path`` (its normalisation and layout are kept). Defaults
    differ from ``train``: lr 1e-4, 1 epoch; the dataset is inferred from the input size unless ``data``."""
    from toolkit.ir.onnx_import import import_onnx

    # the fine-tuning recipe (toolkit.train.recipes): low lr, short ramp from the current radius, guard
    kw.setdefault("lr", 1e-4)
    kw.setdefault("epochs", 1)
    kw.setdefault("clean_guard", 2.0)
    if kw.get("keep_best") is None:  # on with the guard: it measures the guard's held-out images
        kw["keep_best"] = kw["clean_guard"] is not None
    kw.setdefault("eps_start", "auto")
    if kw.get("ramp") is None:
        e, w = kw["epochs"], kw.get("warmup", 0)
        kw["ramp"] = min(max(1, e // 2), e - w) if isinstance(e, int) and isinstance(w, int) and e > w else None
    if kw.get("ibp_init"):
        raise BadInputError("--ibp-init re-draws the weights: it is for train (from scratch), not finetune")
    cfg = _config(eps=eps, out=out, **kw)
    path = Path(model_path)
    if not path.is_file():
        raise BadModelError(f"model file {path} does not exist")
    base = {"command": "finetune", "model": str(path), "mean": mean, "std": std}

    def build():
        g = import_onnx(path, mean=mean, std=std)
        base["model_sha256"] = g.meta.get("sha256", "")
        return g

    return _run(build, cfg, base, callbacks)


# -- validation ----------------------------------------------------------------------------------------------

def _config(**kw) -> TrainConfig:
    unknown = set(kw) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**kw)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    if cfg.method not in METHODS:
        raise BadInputError(f"unknown training method {cfg.method!r}; choose from {', '.join(METHODS)}")
    for name in ("lam", "gamma"):
        v = getattr(cfg, name)
        if not math.isfinite(v) or v < 0:
            flag = "--reg-d (lambda)" if name == "lam" else "--reg-r (gamma)"
            raise BadInputError(f"{flag} must be finite and >= 0, got {v}")
    if cfg.method in PURE_IBP:  # value checks, and "d/r not defined for pure IBP" errors
        make_loss(cfg.method, lam=cfg.lam, gamma=cfg.gamma, mtl_alpha=cfg.mtl_alpha, sabr_lambda=cfg.sabr_lambda,
                  attack_steps=cfg.attack_steps)
    WarmupConfig(cfg.warmup_reg, cfg.warmup_tol, cfg.eps)  # value checks
    if cfg.loss_fusion:  # before any data is read
        check_loss_fusion(cfg.method, RegConfig(cfg.lam, cfg.gamma))
    if cfg.warmup_reg > 0 and cfg.method == "cp":
        make_loss("cp", warmup_reg=cfg.warmup_reg)  # raises: the warm-up regularizers read IBP bounds
    if cfg.proj and cfg.method != "cp":
        raise BadInputError(f"--proj applies to --method cp only (got --method {cfg.method})")
    if isinstance(cfg.eps_start, str) and cfg.eps_start != "auto":
        raise BadInputError(f"--eps-start must be a number >= 0 or 'auto', got {cfg.eps_start!r}")
    for name in ("eps", "eps_start"):
        v = getattr(cfg, name)
        if v == "auto":
            continue
        if not (math.isfinite(v) and v >= 0):
            raise BadInputError(f"--{name.replace('_', '-')} must be finite and >= 0, got {v}")
    if cfg.eval_eps is None:
        cfg.eval_eps = cfg.eps
    if not (math.isfinite(cfg.eval_eps) and cfg.eval_eps >= 0):
        raise BadInputError(f"--eval-eps must be finite and >= 0, got {cfg.eval_eps}")
    if cfg.eps > cfg.eval_eps and not cfg.allow_larger_train_eps:
        raise BadInputError(f"the eps schedule goes to {cfg.eps:g}, past the eval eps {cfg.eval_eps:g}; lower --eps "
                            "or pass --allow-larger-train-eps (the paper trains at 0.4 for a test eps of 0.3)")
    if cfg.clean_guard is not None and not (math.isfinite(cfg.clean_guard) and cfg.clean_guard >= 0):
        raise BadInputError(f"--clean-guard must be finite and >= 0 (percentage points), got {cfg.clean_guard}")
    if cfg.keep_best and cfg.clean_guard is None:
        raise BadInputError("--keep-best selects on the guard's held-out images: it needs --clean-guard")
    if cfg.guard_data is not None:
        if cfg.clean_guard is None:
            raise BadInputError("--guard-data gives the guard its images: it needs --clean-guard")
        if not str(cfg.guard_data).lower().endswith(".npz"):
            raise BadInputError(f"--guard-data takes an .npz of validation images, got {cfg.guard_data!r} (a named "
                                "dataset's splits are its training or its test images)")
    for name in ("epochs", "batch_size", "lr_step", "pgd_steps", "eval_batch_size", "guard_n"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < (0 if name == "pgd_steps" else 1):
            raise BadInputError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    if cfg.ramp is None:
        cfg.ramp = cfg.epochs // 2
    if cfg.warmup < 0 or cfg.ramp < 0:
        raise BadInputError("--warmup and --ramp must be >= 0 epochs")
    if cfg.warmup + cfg.ramp > cfg.epochs:
        raise BadInputError(f"the eps schedule runs past the end of training: warm-up {cfg.warmup} + ramp "
                            f"{cfg.ramp} epochs > --epochs {cfg.epochs}")
    if cfg.optimizer not in OPTIMIZERS:
        raise BadInputError(f"unknown optimizer {cfg.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
    if not (math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0):
        raise BadInputError(f"--grad-clip must be >= 0, got {cfg.grad_clip}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise BadInputError(f"--weight-decay must be >= 0, got {cfg.weight_decay}")
    for name in ("train_n", "test_n"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise BadInputError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    from toolkit.certify.checks import order_methods, resolve_device

    resolve_device(cfg.device)
    cfg.eval_methods = order_methods(cfg.eval_methods or DEFAULT_EVAL[cfg.method])
    cfg.lr_milestones = tuple(int(m) for m in cfg.lr_milestones)
    _schedules(cfg, steps_per_epoch=1)  # value checks of the schedule settings
    try:  # an output another process is training into: say so, not "holds a checkpoint of an earlier run"
        check_not_busy(_paths(cfg, check_ckpt=False)[0])
    except OutputBusyError as e:
        raise BadInputError(str(e)) from None
    _paths(cfg)


def _paths(cfg: TrainConfig, check_ckpt: bool = True):
    """(onnx path, report path, checkpoint folder); the folders must exist and be writable, and (with
    ``check_ckpt``) the checkpoint folder must agree with ``resume``."""
    out = Path(cfg.out)
    if out.is_dir():
        raise BadInputError(f"--out {out} is a folder; give a file name such as model.onnx")
    stem = out.with_suffix("") if out.suffix.lower() == ".onnx" else out
    report = Path(cfg.report) if cfg.report else stem.with_name(stem.name + ".h5")
    ckpt = stem.with_name(stem.name + ".ckpt")
    for p in (out, report):
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise BadInputError(f"cannot write {p}: folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BadInputError(f"cannot write {p}: folder {parent} is not writable")
    if report.resolve() == out.resolve():
        raise BadInputError("--report must differ from --out")
    if ckpt.exists() and not ckpt.is_dir():
        raise BadInputError(f"checkpoint folder {ckpt} exists and is not a folder")
    if not check_ckpt:
        return out, report, ckpt
    has_ckpt = (ckpt / CKPT_NAME).is_file()
    if cfg.resume and not has_ckpt:
        raise BadInputError(f"--resume: no checkpoint {ckpt / CKPT_NAME} to resume from")
    if has_ckpt and not cfg.resume:
        raise BadInputError(f"{ckpt} holds a checkpoint of an earlier run; pass --resume to continue it or "
                            "remove the folder")
    return out, report, ckpt


def _schedules(cfg: TrainConfig, steps_per_epoch: int, eps_start: float | None = None):
    eps_start = cfg.eps_start if eps_start is None else eps_start
    eps_start = 0.0 if eps_start == "auto" else eps_start  # (value checks before the radius is known)
    eps = EpsSchedule(cfg.eps, steps_per_epoch, cfg.warmup, cfg.ramp, cfg.eps_schedule, eps_start)
    start = cfg.warmup + cfg.ramp if cfg.lr_decay_start is None else cfg.lr_decay_start
    lr = LRSchedule(cfg.lr, cfg.lr_schedule, cfg.lr_decay, cfg.lr_step, start, cfg.lr_milestones)
    beta = BetaSchedule(eps, cfg.beta_final)
    kappa = None if cfg.kappa_final is None else KappaSchedule(eps, cfg.kappa_final)
    return eps, lr, beta, kappa


# -- data ------------------------------------------------------------------------------------------------------

def _zoo_dataset(dataset: str, cfg: TrainConfig) -> str:
    """The zoo's input family ("mnist"/"cifar10") for a dataset name (npz data: MNIST-shaped unless named)."""
    key = str(dataset).lower().replace("-", "_")
    return "cifar10" if key.startswith("cifar") else "mnist"


def _infer_data(graph) -> str:
    n = math.prod(graph.input_spec.shape)
    if n == 784:
        return "mnist"
    if n == 3 * 32 * 32:
        return "cifar10"
    raise BadInputError(f"cannot tell the dataset of a model with input shape {tuple(graph.input_spec.shape)}; "
                        "pass --data")


def _load(cfg: TrainConfig, graph, which: str):
    """(Dataset fitted to the model input shape, its name)."""
    from toolkit.certify.checks import fit_shape
    from toolkit.data import load_dataset

    name = {"train": cfg.train_data, "test": cfg.test_data, "guard": cfg.guard_data}[which] or cfg.data \
        or _infer_data(graph)
    n = {"train": cfg.train_n, "test": cfg.test_n, "guard": cfg.guard_n}[which]
    key = str(name).lower().replace("-", "_")
    split = "test" if key == "mnist_test_1000" or which == "guard" else which  # (guard: an .npz, no split)
    ds = load_dataset(name, split, cfg.data_root, n)
    ds.x = fit_shape(torch.as_tensor(ds.x, dtype=torch.float32), tuple(graph.input_spec.shape),
                     f"{which} samples")
    ds.y = torch.as_tensor(ds.y).long().reshape(-1)
    _check_classifier(graph, ds, key)
    return ds, str(name)


def _check_classifier(graph, ds, key) -> None:
    """The model must end in one score per class of the data."""
    from toolkit.certify.checks import classifier_outputs

    k = classifier_outputs(graph)
    n_classes = N_CLASSES.get(key)
    if n_classes is not None and k != n_classes:
        raise BadModelError(f"the model has {k} outputs but {key} has {n_classes} classes")
    if len(ds.y) and (int(ds.y.min()) < 0 or int(ds.y.max()) >= k):
        raise BadModelError(f"the data has labels up to {int(ds.y.max())} but the model has {k} outputs")


# -- preflight ---------------------------------------------------------------------------------------------------

def _preflight(graph, loss_fn, cfg, x, y):
    """Run the training loss (forward + backward), the eval bounds and an ONNX export on two samples, so an
    unsupported op fails before anything is written."""
    from toolkit.bounds import margin_lower_bound
    from toolkit.ir.onnx_export import export_onnx
    from toolkit.spec import InputSet

    loss_fn.check_graph(graph)
    xb, yb = x[:2].to(cfg.device), y[:2].to(cfg.device)
    graph.to(cfg.device)
    # First and last step: CROWN-IBP runs its CROWN pass only while beta > 0, so try both ends.
    for step in (0, 10 ** 9):
        loss_fn(graph, xb, yb, cfg.eps, step).loss.backward()
    graph.zero_grad(set_to_none=True)
    inp = InputSet.from_eps(xb, cfg.eval_eps, clip=graph.input_spec.value_range)
    with torch.no_grad():
        for m in cfg.eval_methods:
            margin_lower_bound(graph, inp, yb, m)
    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(graph, Path(tmp) / "preflight.onnx", n_check=2)


# -- the run -----------------------------------------------------------------------------------------------------

def _run(build, cfg: TrainConfig, base: dict, callbacks=()) -> TrainOutcome:
    from .distributed import DistContext

    # Under torchrun: one process per rank (DDP); rank 0 alone writes files and evaluates (distributed.py).
    ctx = DistContext.from_env(cfg.device)
    cfg.device = ctx.device
    lock = OutputLock(_paths(cfg, check_ckpt=False)[0])
    if ctx.is_main:  # one run per output: a second process refuses before it looks at PATH.ckpt or PATH.onnx
        try:
            lock.acquire()
        except OutputBusyError as e:
            raise BadInputError(str(e)) from None
        except OSError as e:
            raise BadInputError(f"cannot write {cfg.out}: {e}") from None
    try:
        onnx_path, report_path, ckpt = _paths(cfg)
        return _train_and_export(build, cfg, base, callbacks, ctx, onnx_path, report_path, ckpt)
    finally:
        lock.release()


def _train_and_export(build, cfg, base, callbacks, ctx, onnx_path, report_path, ckpt) -> TrainOutcome:
    from toolkit.certify import certify

    graph = build()
    train_ds, train_name = _load(cfg, graph, "train")
    test_ds, test_name = _load(cfg, graph, "test")
    train_x, train_y, guard = _split_guard(cfg, train_ds, graph)
    # "auto": from the model as built (the starting model, also on resume), so a resumed run gets the same ε
    eps_start = (min(cfg.eps, start_radius(graph.to(cfg.device), train_x, train_y, cfg.eps, cfg.method))
                 if cfg.eps_start == "auto" else cfg.eps_start)
    steps = math.ceil(len(train_x) / cfg.batch_size)
    eps_s, lr_s, beta_s, kappa_s = _schedules(cfg, steps, eps_start)
    loss_fn = make_loss(cfg.method, lam=cfg.lam, gamma=cfg.gamma, r_norm=cfg.r_norm, r_squared=cfg.r_squared,
                        aggregate=cfg.aggregate, proj=cfg.proj, seed=cfg.seed, beta=beta_s, kappa=kappa_s,
                        r_coupling=cfg.r_coupling, mtl_alpha=cfg.mtl_alpha, sabr_lambda=cfg.sabr_lambda,
                        attack_steps=cfg.attack_steps, warmup_reg=cfg.warmup_reg, warmup_tol=cfg.warmup_tol,
                        eps_max=cfg.eps, loss_fusion=cfg.loss_fusion)
    _preflight(graph, loss_fn, cfg, train_ds.x, train_ds.y)

    graph.to(cfg.device)
    loss_fn = ctx.wrap_loss(graph, loss_fn)
    opt = _optimizer(graph, cfg)
    settings = dict(cfg.result_settings(), **{k: base.get(k) for k in ("command", "model", "model_sha256")})
    trainer = Trainer(graph, loss_fn, opt, eps_s, lr_s, train_x, train_y, cfg.batch_size, cfg.epochs,
                      seed=cfg.seed, device=cfg.device, grad_clip=cfg.grad_clip, ckpt_dir=ckpt, config=settings,
                      config_defaults=TrainConfig.setting_defaults(),
                      progress=cfg.progress and ctx.is_main, callbacks=list(callbacks) if ctx.is_main else [],
                      checks=[guard] if guard else [])
    work_report = ckpt / REPORT_NAME
    if guard:  # every rank: the weights are the same, so each reaches the same verdict
        guard.start(trainer)  # a resumed run's load() replaces this with the stored record
    if cfg.resume:
        trainer.load()
    elif ctx.is_main:
        ckpt.mkdir(parents=True, exist_ok=True)
        for stale in (work_report, work_report.with_name(REPORT_NAME + ".partial")):
            stale.unlink(missing_ok=True)
        trainer.save()  # epoch 0: the starting weights, so a kill during "before" resumes correctly

    ev = dict(methods=cfg.eval_methods, out=work_report, pgd_steps=cfg.pgd_steps, batch_size=cfg.eval_batch_size,
              device=cfg.device, seed=cfg.seed, data_name=test_name, split="test", mean=base.get("mean"),
              std=base.get("std"), model_path=base["model"], progress=cfg.progress)
    if not ctx.is_main:
        trainer.ckpt_dir = None
    if trainer.epoch == 0 and ctx.is_main:
        certify(graph, test_ds, cfg.eval_eps, model_name="before", model_sha256=base.get("model_sha256", ""), **ev)
    history = trainer.fit()
    if not ctx.is_main:
        ctx.barrier()  # wait for rank 0's evaluation and files
        return TrainOutcome(graph, history, {}, {}, onnx_path, report_path, f"(rank {ctx.rank}: rank 0 writes "
                                                                            "the model and the report)")
    train_time = sum(h["time_s"] for h in history)
    guard_verdict = guard_summary(trainer.extra)
    certify(graph, test_ds, cfg.eval_eps, model_name="after", **ev)
    runs = {r.name.split("_eps")[0]: r for r in _read_runs(work_report)}
    summary = {k: _summary(runs[k]) for k in ("before", "after")}
    table = (_table(summary, cfg.eval_methods, cfg.eval_eps) + guard_verdict_text(guard_verdict)
             + (f"\n(eps ramp from the model's median certified radius {eps_start:.4g} to {cfg.eps:g})"
                if cfg.eps_start == "auto" else ""))
    meta = _provenance(cfg, base, train_name, len(train_x), summary)
    _write_train_group(work_report, cfg, base, history, summary, train_time, len(train_x),
                       [runs["before"].name, runs["after"].name], guard_verdict, eps_start)
    _copy_atomic(work_report, report_path)
    from toolkit.ir.onnx_export import export_onnx

    graph.meta.pop("sha256", None)  # the exported file is a new model, not the imported one
    export_onnx(graph.cpu(), onnx_path, metadata=meta)
    ctx.barrier()
    return TrainOutcome(graph, history, summary["before"], summary["after"], onnx_path, report_path, table,
                        guard=guard_verdict)


def _split_guard(cfg, train_ds, graph):
    """(training images, labels, CleanGuard or None): the guard holds out the last ``guard_n`` training
    images (at most a fifth of them), which are then not trained on; with ``guard_data`` it measures the first
    ``guard_n`` images of that file instead and every training image is trained on."""
    if cfg.clean_guard is None:
        return train_ds.x, train_ds.y, None
    kw = dict(batch_size=cfg.eval_batch_size, keep_best=cfg.keep_best, eps=cfg.eval_eps,
              methods=tuple(cfg.eval_methods))
    if cfg.guard_data is not None:
        gd, _ = _load(cfg, graph, "guard")
        return train_ds.x, train_ds.y, CleanGuard(gd.x, gd.y, cfg.clean_guard, source=f"images of {cfg.guard_data}",
                                                  **kw)
    n = min(cfg.guard_n, len(train_ds) // 5)
    if n < 1:
        raise BadInputError(f"--clean-guard needs at least 5 training images to hold some out, got {len(train_ds)}")
    return train_ds.x[:-n], train_ds.y[:-n], CleanGuard(train_ds.x[-n:], train_ds.y[-n:], cfg.clean_guard, **kw)


def _optimizer(graph, cfg):
    params = [p for p in graph.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _read_runs(path):
    from toolkit.report import read_report

    return read_report(path).runs


def _summary(run) -> dict:
    from toolkit.report import summarize

    s = summarize(run)
    out = {"clean_err": float(s["clean_err"]), "pgd_err": float(s["pgd_err"])}
    for m, v in zip(run.methods, np.asarray(s["certified_err"]).reshape(-1)):
        out[f"certified_err/{m}"] = float(v)
    out["n"] = int(run.n_done)
    return out


def _table(summary: dict, methods, eps) -> str:
    from tabulate import tabulate

    cols = ["clean_err", "pgd_err"] + [f"certified_err/{m}" for m in methods]
    heads = ["", "clean err %", "PGD err %"] + [f"certified err % ({m})" for m in methods]
    rows = [[name] + [f"{summary[name][c]:.2f}" for c in cols] for name in ("before", "after")]
    rows.append(["change"] + [f"{summary['after'][c] - summary['before'][c]:+.2f}" for c in cols])
    n = summary["after"]["n"]
    return tabulate(rows, headers=heads, tablefmt="github", disable_numparse=True) + \
        f"\n(test set: {n} samples, eps = {eps:g})"


def _provenance(cfg, base, train_name, n_train, summary) -> dict:
    return {"tightcert.train.command": base["command"],
            "tightcert.train.base_model": base["model"],
            "tightcert.train.base_sha256": base.get("model_sha256", ""),
            "tightcert.train.data": f"{train_name} ({n_train} samples)",
            "tightcert.train.config": {k: v for k, v in cfg.result_settings().items()},
            "tightcert.train.before": summary["before"], "tightcert.train.after": summary["after"],
            "tightcert.train.date": datetime.datetime.now().isoformat(timespec="seconds")}


def _write_train_group(path, cfg, base, history, summary, train_time, n_train, run_names, guard=None,
                       eps_start=None) -> None:
    from toolkit.report.groups import write_train_group

    attrs = {"command": base["command"], "model": base["model"], "model_sha256": str(base.get("model_sha256", "")),
             "method": cfg.method, "config": json.dumps(cfg.result_settings()), "eval_eps": float(cfg.eval_eps),
             "eval_methods": json.dumps(list(cfg.eval_methods)), "n_train": int(n_train),
             "runs": json.dumps(run_names), "tightcert_version": __version__, "torch_version": str(torch.__version__),
             "train_time_s": float(train_time), "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
             "eps_start": float(cfg.eps_start if eps_start is None else eps_start),
             "guard": json.dumps(guard if guard is None else dict(guard, clean_err_per_epoch=[
                 h.get("guard_clean_err") for h in history], cert_err_per_epoch=[
                 h.get("guard_cert_err") for h in history]))}
    write_train_group(path, attrs, {m: [h[m] for h in history] for m in EPOCH_METRICS},
                      {c: (summary["before"][c], summary["after"][c]) for c in summary["before"]})


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)

"""tightcert finetune: certified fine-tuning of an ONNX classifier with the tightness regularizers."""
from __future__ import annotations

from .cmd_train import add_training_arguments, config_kwargs, epoch_logger, print_outcome
from .common import add_norm

NAME = "finetune"
HELP = "fine-tune an ONNX classifier with certified training + regularizers d and r; export the improved ONNX"
DESCRIPTION = """Fine-tune an imported ONNX classifier with a certified loss plus the regularizers d and r
(see `tightcert train --help` for the loss). The model's normalisation and layout are kept: with --mean/--std
(normalisation outside the file) eps is in [0,1] pixel units and the exported file again takes normalised
inputs, like the original.

Writes PATH.onnx (the improved model, training provenance in its metadata), PATH.h5 (per-epoch metrics and the
before/after clean, PGD and certified error on the test set) and PATH.ckpt/ (per-epoch checkpoints; --resume)."""


def add_arguments(p):
    p.add_argument("model", help="ONNX classifier to fine-tune")
    add_norm(p)
    add_training_arguments(p, finetune=True)


def run(args) -> int:
    from toolkit.train.api import finetune

    kw = config_kwargs(args)
    callbacks = [] if args.progress else [epoch_logger]
    res = finetune(args.model, eps=args.eps, out=args.out, mean=args.mean, std=args.std, data=args.data,
                   callbacks=callbacks, **kw)
    print_outcome(res)
    return 0

"""``tightcert supports <capability>``: what ``verify`` can do (VNN-LIB 2.0 §5.4). No torch, no onnx."""
from __future__ import annotations

import sys

NAME = "supports"
HELP = "report one VNN-LIB solver capability (VNN-LIB 2.0 §5.4)"
DESCRIPTION = ("Answer one VNN-LIB 2.0 capability query, one item per line (e.g. `tightcert supports "
               "--onnx-operators`). Exactly one capability flag is required.")
ALIASES = ("capabilities",)


def add_arguments(p):
    from toolkit.vnnlib.capabilities import ALIASES as FLAG_ALIASES, CAPABILITIES

    p.allow_abbrev = False  # `--onnx-e` is not `--onnx-element-types`
    g = p.add_mutually_exclusive_group(required=True)
    for flag in CAPABILITIES:
        g.add_argument(f"--{flag}", dest="capability", action="store_const", const=flag)
    for alias, flag in FLAG_ALIASES.items():
        g.add_argument(f"--{alias}", dest="capability", action="store_const", const=flag, help="==SUPPRESS==")


def run(args) -> int:
    from toolkit.vnnlib.capabilities import answer

    sys.stdout.write(answer(args.capability))
    sys.stdout.flush()
    return 0

"""Command line: argument parsing and error messages only (architecture.md, "cli").

Each subcommand is a module ``toolkit/cli/cmd_<name>.py`` defining ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; it calls a Python API function and imports torch
lazily, so that ``--name``, ``--version`` and ``supports`` answer without importing torch.
Errors of the ``TightcertError`` family become one line on stderr and exit status 2 (``--debug``
shows the traceback).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from toolkit import NAME, __version__

DESCRIPTION = """tightcert: make neural networks provably robust.

Import an ONNX classifier, certify it under l-inf balls (IBP, Fast-Lin/CP, CROWN, CROWN-IBP, alpha-CROWN),
fine-tune it with certified training plus the tightness regularizers d and r (Zhu et al., arXiv
2002.09766), export the improved ONNX model, and answer VNN-LIB queries."""


def _subcommand_modules():
    import toolkit.cli as pkg

    names = sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("cmd_"))
    return [importlib.import_module(f"toolkit.cli.{n}") for n in names]


class _Parser(argparse.ArgumentParser):
    """Bad option values get one line (the developers' guide: one readable line and a non-zero exit), not
    argparse's usage block; subcommand parsers inherit this class."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=NAME, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", action="store_true", help="print the solver's name (VNN-LIB 2.0 CLI)")
    parser.add_argument("--version", action="store_true", help="print the version (VNN-LIB 2.0 CLI)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in _subcommand_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           aliases=getattr(mod, "ALIASES", ()),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show full tracebacks on errors")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name:
        print(NAME)
        return 0
    if args.version:
        print(__version__)
        return 0
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from toolkit.errors import TightcertError
    from toolkit.runtime import retain_freed_memory

    retain_freed_memory()  # large bound tensors every step: no page faults per reuse (toolkit/runtime.py)
    try:
        rc = int(args._run(args) or 0)
        sys.stdout.flush()  # a full disk or /dev/full shows here, not as a traceback at interpreter exit
        return rc
    except TightcertError as e:
        if getattr(args, "debug", False):
            raise
        print(f"{NAME}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tightcert info ... | head`: the reader left; not an error of ours
        _quiet_stdout()
        return 0
    except OSError as e:  # disk full, permissions, a vanished folder while writing: one line; partials are kept
        if getattr(args, "debug", False):
            raise
        print(f"{NAME}: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        _quiet_stdout()
        return 2
    except KeyboardInterrupt:
        print(f"{NAME}: interrupted", file=sys.stderr)
        return 130


def _quiet_stdout():
    """Point stdout at /dev/null so the interpreter's final flush of unwritable output raises nothing."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

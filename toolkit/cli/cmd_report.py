"""tightcert report: re-print the certify tables from an HDF5 report alone."""
from __future__ import annotations

NAME = "report"
HELP = "re-print the tables of a certify report (.h5)"
DESCRIPTION = """Re-print the certify tables from an HDF5 report, without the model or the data. For a train or
finetune report, also what ran and the clean guard's / keep-best's verdict.

An unfinished run (a report.h5.partial left by an interrupted certify) can be shown by naming the .partial
file; its rows say 'unfinished' and count only the samples written so far."""


def add_arguments(p):
    p.add_argument("report", help="report written by tightcert certify --out")
    p.add_argument("--format", default="github", help="table format passed to tabulate: github, latex, plain, ...")


def run(args):
    from toolkit.report import format_table, read_report

    from .cmd_certify import check_format

    check_format(args.format)
    rep = read_report(args.report)
    print(format_table(rep.runs, args.format))
    print(training_summary(args.report), end="")
    return 0


def training_summary(path) -> str:
    """For a train / finetune report: what ran and the guard's verdict (as printed under its before/after
    table); "" for a certify report."""
    from toolkit.report.groups import read_attrs
    from toolkit.report.verdicts import verdict_text

    a = read_attrs(path, "train")
    if a is None:
        return ""
    cfg = a.get("config") or {}
    parts = [f"--method {a.get('method', '?')}", f"{cfg.get('epochs', '?')} epoch(s) on {a.get('n_train', '?')} "
             "training images"]
    if "train_time_s" in a:
        parts.append(f"{a['train_time_s']:.0f} s of training")
    if "eps_start" in a:  # (reports older than the ramp's start lack it)
        parts.append(f"ε ramp from {a['eps_start']:.4g}")
    return (f"\n{a.get('command', 'train')} of {a.get('model', '?')}: " + ", ".join(parts)
            + verdict_text(a.get("guard")) + "\n")

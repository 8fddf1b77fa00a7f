"""tightcert report: re-print the certify tables from an HDF5 report alone."""
from __future__ import annotations

NAME = "report"
HELP = "re-print the tables of a certify report (.h5)"
DESCRIPTION = """Re-print the certify tables from an HDF5 report, without the model or the data.

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
    return 0

"""tightcert merge: join the HDF5 reports of `certify --shard K/N` runs into one report."""
from __future__ import annotations

NAME = "merge"
HELP = "join certification shards (certify --shard K/N) into one HDF5 report"
DESCRIPTION = """Join the reports of `tightcert certify ... --shard K/N --out SHARD_K.h5` (K = 1..N) into OUT.

The merged report has the layout and row order of an unsharded run over the same selection, with the
summary recomputed over all samples. Refused: unfinished shards, shards of different settings (model,
data, eps, methods, PGD settings, seed, ...), a shard missing or given twice, and samples that do not add
up to the selection the shards were cut from. OUT must not exist yet."""


def add_arguments(p):
    p.add_argument("out", help="merged HDF5 report to write (must not exist)")
    p.add_argument("shards", nargs="+", help="the shard reports (any order)")
    p.add_argument("--format", default="github", help="table format passed to tabulate: github, latex, plain, ...")


def run(args):
    from toolkit.certify.shard import merge_reports
    from toolkit.report import format_table, read_report

    from .cmd_certify import check_format

    check_format(args.format)
    path = merge_reports(args.out, args.shards)
    print(format_table(read_report(path).runs, args.format))
    print(f"\nreport: {path}")
    return 0

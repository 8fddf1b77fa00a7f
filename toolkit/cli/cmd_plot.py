"""tightcert plot: PNG plots from an HDF5 certify report."""
from __future__ import annotations

NAME = "plot"
HELP = "plot a certify report: accuracy against ε, histograms of margin lower bounds"
DESCRIPTION = """Write PNG plots from an HDF5 certify report (the report alone; no model or data needed):

  accuracy_vs_eps.png      clean / PGD / certified accuracy against ε for the ε-ball runs (a sweep)
  margin_lb_<run>.png      per run, the histogram of each method's worst margin lower bound per sample"""


def add_arguments(p):
    p.add_argument("report", help="report written by tightcert certify --out")
    p.add_argument("--out-dir", default=None, help="folder for the PNG files (default: <report>_plots)")


def run(args):
    from pathlib import Path

    from toolkit.report import read_report
    from toolkit.report.plots import plot_report

    rep = read_report(args.report)
    out_dir = args.out_dir or str(Path(args.report).with_suffix("")) + "_plots"
    for path in plot_report(rep, out_dir):
        print(path)
    return 0

"""tightcert plot: PNG plots from an HDF5 certify report."""
from __future__ import annotations

NAME = "plot"
HELP = "plot a report: accuracy against ε, margin histograms; training curves and before/after for train reports"
DESCRIPTION = """Write PNG plots from an HDF5 certify report (the report alone; no model or data needed):

  accuracy_vs_eps.png      clean / PGD / certified accuracy against ε for the ε-ball runs (two or more ε)
  margin_lb_<run>.png      per run, the histogram of each method's worst margin lower bound per sample
  training_curves.png      train/finetune reports: loss, robust CE, d, r, robust and clean error per epoch,
                           with ε and β on a second axis
  before_after.png         train/finetune reports: clean, PGD and certified error before and after"""


def add_arguments(p):
    p.add_argument("report", help="report written by tightcert certify --out")
    p.add_argument("--out-dir", default=None, help="folder for the PNG files (default: <report>_plots)")


def run(args):
    from pathlib import Path

    from toolkit.report import read_report
    from toolkit.report.groups import read_attrs, read_train_group
    from toolkit.report.plots import plot_report

    rep = read_report(args.report)
    has_train = Path(args.report).is_file() and read_attrs(args.report, "train") is not None
    train = read_train_group(args.report) if has_train else None
    out_dir = args.out_dir or str(Path(args.report).with_suffix("")) + "_plots"
    for path in plot_report(rep, out_dir, train):
        print(path)
    return 0

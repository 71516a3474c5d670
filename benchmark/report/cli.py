"""`python -m benchmark.report RESULTS [--out DIR] ...` (also `python -m benchmark report`)."""
from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from ..errors import BenchmarkInputError, exit_on_user_error
from ..layout import LABEL_EFFICIENCY, run_dirs
from .label_efficiency import write_label_efficiency_report
from .results import load_results
from .write import ReportOptions, write_report

PROG = "benchmark.report"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark.report",
                                description="Tables and figures of the paper from a results directory written by "
                                            "`python -m benchmark` (result files only; nothing is retrained).")
    p.add_argument("results", type=Path, help="results directory (OUT of python -m benchmark)")
    p.add_argument("--out", type=Path, help="where the tables and figures go (default RESULTS/report)")
    p.add_argument("--data", type=Path, help="dataset directory of the test images, if it moved since the run "
                                             "(t-SNE and Grad-CAM only; checked against the recorded manifest hash)")
    p.add_argument("--lr", type=float, help="learning rate of the curves in fig3 (default: each run's selected LR)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates for the CIs (default 1000; 0: none)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="processes for the bootstrap CIs, one run at a time each (default: the CPU count, "
                        f"{os.cpu_count()} here)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap, t-SNE and SmoothGrad noise")
    p.add_argument("--tsne-run", help="run(s) for fig5, comma-separated (default: the best by test macro-F1)")
    p.add_argument("--gradcam-run", help="run for fig6 (default: VGG16 at its better depth, else the best run)")
    p.add_argument("--smooth-samples", type=int, default=20, help="noisy copies per image for SmoothGrad (20)")
    p.add_argument("--no-model-figures", action="store_true", help="skip fig5 and fig6 (no model loading)")
    p.add_argument("--curve-metric", default="macro_f1",
                   help=f"test metric of fig7 and first in table3, from {LABEL_EFFICIENCY} (default macro_f1)")
    return p


def options(args: argparse.Namespace) -> ReportOptions:
    return ReportOptions(lr=args.lr, n_boot=args.n_boot, seed=args.seed, data=args.data,
                         tsne_runs=tuple(s.strip() for s in args.tsne_run.split(",")) if args.tsne_run else None,
                         gradcam_run=args.gradcam_run, smooth_samples=args.smooth_samples,
                         model_figures=not args.no_model_figures, jobs=args.jobs)


def main(argv: list[str] | None = None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    args = build_parser().parse_args(argv)
    return exit_on_user_error(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    if args.n_boot < 0 or args.smooth_samples < 0 or args.jobs < 1:
        raise BenchmarkInputError("--n-boot and --smooth-samples must be >= 0, --jobs >= 1")
    out = args.out or args.results / "report"
    if (args.results / LABEL_EFFICIENCY).is_file():
        write_label_efficiency_report(args.results, out, metric=args.curve_metric)
        if not run_dirs(args.results):  # a curve's root holds no run of its own, only OUT/frac<F>/rep<R>/
            return 0
    results = load_results(args.results)
    with warnings.catch_warnings():
        # t-SNE and Keras chatter would bury the report's own lines
        warnings.simplefilter("ignore", FutureWarning)
        write_report(results, out, options(args))
    return 0

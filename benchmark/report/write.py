"""The whole report of a results directory: every table and figure into one folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from matplotlib.figure import Figure

from data_prep import atomic
from ..errors import FigureUnavailable
from ..layout import check_writable
from .figures import fig3_curves, fig4_confusion, fig4_scatter, fig4_selection, save_figure
from .model_figures import cam_grid, default_cam_run, fig5_tsne, fig6_gradcam
from .results import Results, done_runs
from .table1 import table1_markdown, table1_time
from .table2 import table2_latex, table2_markdown, table2_test


@dataclass(frozen=True)
class ReportOptions:
    """What the report computes and draws beyond the result files (the command line's options)."""

    lr: float | None = None                  # fig3's learning rate; None: each run's selected one
    n_boot: int = 1000                       # bootstrap replicates of table 2's CIs; 0: none
    seed: int = 0                            # of the bootstrap, t-SNE and SmoothGrad noise
    data: str | Path | None = None           # the dataset of the test images, if it moved since the run
    tsne_runs: tuple[str, ...] | None = None  # fig5's runs; None: the best by test macro-F1
    gradcam_run: str | None = None           # fig6's run; None: default_cam_run
    smooth_samples: int = 20                 # noisy copies per image for SmoothGrad
    model_figures: bool = True               # fig5 and fig6, which load the model
    jobs: int = 1                            # processes for the bootstrap


def write_report(results: Results, out: Path, options: ReportOptions = ReportOptions(), *,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Every table and figure into `out`; figures needing what is not on disk are skipped with a logged reason."""
    out = Path(out)
    check_writable(out)  # before the bootstrap's minutes, not at the first table written
    runs = done_runs(results)
    unfinished = [f"{r.name} ({r.status})" for r in results.runs if not r.done]
    log(f"{results.root}: {len(runs)} finished run(s)" + (f"; not reported: {', '.join(unfinished)}"
                                                          if unfinished else ""))
    # named runs are checked before any work, so a typo fails at once
    cam_run = results.get(options.gradcam_run) if options.gradcam_run else None
    for name in options.tsne_runs or ():
        results.get(name)
    for r in runs:  # every result file read and checked now: a damaged one stops the report before Table 1
        _ = r.metrics, r.selection, r.timing, r.predictions
    written: list[Path] = []

    def text(name: str, content: str) -> None:
        written.append(atomic.write_text(out / name, content))

    t1 = table1_time(results)
    written.append(atomic.write_csv(out / "table1_time.csv", t1))
    text("table1_time.md", table1_markdown(t1))
    t2 = table2_test(results, n_boot=options.n_boot, seed=options.seed, jobs=options.jobs)
    written.append(atomic.write_csv(out / "table2_test.csv", t2))
    footer = f"\nNot finished, not reported: {', '.join(unfinished)}.\n" if unfinished else ""
    text("table2_test.md", table2_markdown(t2) + footer)
    text("table2_test.tex", table2_latex(t2))

    def figure(name: str, make: Callable[[], Figure]) -> None:
        try:
            fig = make()
        except FigureUnavailable as exc:
            log(f"{name} skipped: {exc}")
            return
        for suffix in (".png", ".pdf"):
            written.append(save_figure(fig, out / f"{name}{suffix}"))

    figure("fig3_curves", lambda: fig3_curves(results, lr=options.lr))
    task = results.task
    if task != "classification":
        figure("fig4_scatter", lambda: fig4_scatter(results))
    if task == "regression":
        log("fig4_confusion, fig4_selection, fig5_tsne and fig6_gradcam left out: they show classes, and a "
            "regression has none (fig4_scatter shows its test predictions)")
    else:
        figure("fig4_confusion", lambda: fig4_confusion(results))
        figure("fig4_selection", lambda: fig4_selection(results))
        if options.model_figures:
            figure("fig5_tsne", lambda: fig5_tsne(results, runs=options.tsne_runs, data=options.data,
                                                  seed=options.seed))
            cam_run = cam_run or default_cam_run(results)
            figure("fig6_gradcam", lambda: fig6_gradcam(cam_grid(cam_run, data=options.data,
                                                                 samples=options.smooth_samples, seed=options.seed)))
        else:
            log("fig5_tsne and fig6_gradcam skipped: --no-model-figures")
    for p in written:
        log(f"wrote {p}")
    return written

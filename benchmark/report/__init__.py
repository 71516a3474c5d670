"""Paper artifacts from a results directory, from its files alone (no retraining):

    python -m benchmark.report RESULTS [--out DIR]

    table1_time.csv/.md            per run: feature pass, cross-validation, final fit, test time
    table2_test.csv/.md/.tex       test metrics per run in the paper's order, with patient-bootstrap 95 % CIs, the
                                   fold mean ± SD of the selection metric, monotone decoding and IN-range columns
    fig3_curves.png/.pdf           training loss, validation loss, validation accuracy (and the selection metric)
                                   per fold and their fold mean
    fig4_confusion.png/.pdf        confusion matrix of every run (counts and row fractions)
    fig4_selection.png/.pdf        2x2: best and worst run by test macro-F1 at depth 0 and depth 1
    fig4_scatter.png/.pdf          predicted vs true target of every regression or multi-task run
    fig5_tsne.png/.pdf             t-SNE of the pooled features of the test set          (model + dataset needed)
    fig6_gradcam.png/.pdf          truth x prediction grid with Grad-CAM and SmoothGrad   (model + dataset needed)

A label-efficiency results directory (`python -m benchmark --train-fraction ...`: OUT/label_efficiency.csv and
OUT/frac<F>/rep<R>/<run>/) gets instead

    table3_label_efficiency.csv/.md   per run and training fraction: mean ± SD over repeats of the test metrics
    fig7_label_efficiency.png/.pdf    test metric (macro-F1 unless --curve-metric) against the fraction of training
                                      patients, log x, one line per run with a mean ± SD band and every repeat

and each OUT/frac<F>/rep<R> is an ordinary results directory the report reads on its own.
Regression runs (`--task regression`) have MAE, RMSE, R² and the MAE of predicting the training pool's mean in
table 2 instead of class metrics, validation MAE in fig3, and fig4_scatter instead of the class figures (confusion
matrices, t-SNE by class, Grad-CAM per class), which are left out. Multi-task runs get both sets; their Grad-CAM is
not drawn (the class probabilities share one output with the target, and Grad-CAM here reads a classifier's
logits). A report covers runs of one task.

Tables, curves and confusion matrices need only the result files. The last two figures also need the run's
model/model.keras (results copied without weights have none) and the dataset directory the run used
(config.json data.path, or --data); when either is missing the figure is skipped with a message saying why.
Every metric comes from benchmark.metrics and every network input from Dataset.make_input with the run's recorded
Preprocessing, so the report computes what the engine computed.

    results.py          a results directory: Run, Results, load_results
    table1.py           table 1 (time)
    table2.py           table 2 (test metrics, bootstrap CIs, Markdown and LaTeX)
    columns.py          the tables' metric columns, headings and cells
    figures.py          fig3 and fig4 (curves, confusion matrices, selection, scatter) and the figures' style
    label_efficiency.py table 3 and fig7
    model_figures.py    fig5 and fig6, which re-run the model (Keras imported only then)
    write.py            write_report and its ReportOptions
    cli.py              the command line

Importing the package imports no TensorFlow: tables and the figures from result files never need it, and
model_figures imports Keras only when it loads a model.
"""
from ..errors import FigureUnavailable
from .cli import build_parser, main
from .columns import best_mask, metric_keys, split_key
from .figures import fig3_curves, fig4_confusion, fig4_scatter, fig4_selection, save_figure, selection_picks
from .label_efficiency import (fig7_label_efficiency, load_label_efficiency, table3_label_efficiency, table3_markdown,
                               write_label_efficiency_report)
from .model_figures import (CamGrid, cam_grid, cam_picks, dataset_rows, default_cam_run, fig5_tsne, fig6_gradcam,
                            load_model, model_inputs, pooled_features, run_dataset, run_preprocessing)
from .results import Results, Run, confusion, load_results
from .table1 import table1_markdown, table1_time
from .table2 import (all_intervals, baseline_rows, bootstrap_intervals, check_predictions, cv_summary,
                     per_stack_range, table2_latex, table2_markdown, table2_test, weights_short)
from .write import ReportOptions, write_report

__all__ = ["FigureUnavailable", "build_parser", "main", "best_mask", "metric_keys", "split_key", "fig3_curves",
           "fig4_confusion", "fig4_scatter", "fig4_selection", "save_figure", "selection_picks",
           "fig7_label_efficiency", "load_label_efficiency", "table3_label_efficiency", "table3_markdown",
           "write_label_efficiency_report", "CamGrid", "cam_grid", "cam_picks", "dataset_rows", "default_cam_run",
           "fig5_tsne", "fig6_gradcam", "load_model", "model_inputs", "pooled_features", "run_dataset",
           "run_preprocessing", "Results", "Run", "confusion", "load_results", "table1_markdown", "table1_time",
           "all_intervals", "baseline_rows", "bootstrap_intervals", "check_predictions", "cv_summary",
           "per_stack_range", "table2_latex", "table2_markdown", "table2_test", "weights_short", "ReportOptions",
           "write_report"]

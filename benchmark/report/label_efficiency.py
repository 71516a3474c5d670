"""The label-efficiency report of `python -m benchmark --train-fraction`: table 3 (per run and training fraction, mean
± SD over repeats of the test metrics) and fig7 (a test metric against the fraction of training patients), from
OUT/label_efficiency.csv."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from data_prep import atomic
from ..errors import BenchmarkInputError, FigureUnavailable
from ..layout import BASELINE_PREFIX, FINISHED, LABEL_EFFICIENCY, run_order
from ..metrics import higher_is_better
from ..summary import CURVE_METRICS, label_efficiency_summary
from .columns import BASELINE_DEPTH, heading, markdown_table, num
from .figures import OKABE_ITO, save_figure
from .results import run_label

LE_COLUMNS = ("fraction", "repeat", "n_patients", "run", "name", "depth", "status")


def load_label_efficiency(root: Path) -> pd.DataFrame:
    """OUT/label_efficiency.csv as `python -m benchmark --train-fraction` wrote it, in the paper's run order."""
    path = Path(root) / LABEL_EFFICIENCY
    try:
        df = pd.read_csv(path, dtype={"depth": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BenchmarkInputError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in LE_COLUMNS if c not in df]
    if missing:
        raise BenchmarkInputError(f"{path}: missing column(s) {', '.join(missing)}")
    return df.sort_values(["run", "fraction", "repeat"], key=lambda c: c.map(run_order) if c.name == "run" else c,
                          kind="stable").reset_index(drop=True)


def _check_curve_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in df or not pd.api.types.is_numeric_dtype(df[metric]):
        numeric = [c for c in df if pd.api.types.is_numeric_dtype(df[c]) and c not in LE_COLUMNS]
        raise BenchmarkInputError(f"--curve-metric {metric!r} is not a metric of {LABEL_EFFICIENCY}; "
                                  f"choose one of {', '.join(numeric)}")


def _at_most_one(metric: str) -> bool:
    """A score (higher is better: F1, accuracy, AUC, range hit rate, R²) is at most 1, so its axis ends there; an
    error, count or time keeps matplotlib's limits. A per-source column, range_exact[source], is its metric's."""
    try:
        return higher_is_better(metric.split("[")[0])
    except ValueError:  # a column of label_efficiency.csv that is no metric (a count, seconds)
        return False


def table3_label_efficiency(df: pd.DataFrame, metric: str = "macro_f1") -> pd.DataFrame:
    _check_curve_metric(df, metric)
    return label_efficiency_summary(df, [metric] + [m for m in CURVE_METRICS if m != metric and m in df])


def table3_markdown(table: pd.DataFrame) -> str:
    metrics = [c[:-len("_mean")] for c in table if c.endswith("_mean")]
    head = ["network", "depth", "fraction", "patients", "repeats"] + [f"{heading(m)} (mean ± SD)" for m in metrics]
    rows = []
    for _, r in table.iterrows():
        depth = BASELINE_DEPTH if str(r.run).startswith(BASELINE_PREFIX) else str(r.depth)
        rows.append([r["name"], depth, f"{r.fraction:g}", f"{r.n_patients:g}", str(r.repeats)] +
                    [f"{num(r[f'{m}_mean'], 3)} ± {num(r[f'{m}_sd'], 3)}" for m in metrics])
    return (markdown_table(head, rows) + "\nTest metrics on the same held-out patients for every fraction; the "
            "training patients of a fraction are a seeded, class-stratified subset of the training pool, nested "
            "inside the larger fractions of the same repeat. Mean ± SD over the finished repeats (SD — with one "
            "repeat).\n")


def fig7_label_efficiency(df: pd.DataFrame, metric: str = "macro_f1") -> Figure:
    """Test metric against the fraction of training patients (log x): per run the mean over repeats (line), mean ±
    SD (band) and each repeat (dots). Tick labels give the fraction and its number of patients."""
    _check_curve_metric(df, metric)
    done = df[df["status"].isin(FINISHED) & df[metric].notna()]
    if done.empty:
        raise FigureUnavailable(f"no finished run with a {metric} value in {LABEL_EFFICIENCY}")
    table = label_efficiency_summary(done, [metric])
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    colours = list(OKABE_ITO.values())
    runs = list(dict.fromkeys(table["run"]))
    for i, run in enumerate(runs):
        t = table[table["run"] == run]
        points = done[done["run"] == run]
        colour = colours[i % len(colours)]
        mean, sd = t[f"{metric}_mean"].to_numpy(), t[f"{metric}_sd"].fillna(0).to_numpy()
        ax.fill_between(t["fraction"], mean - sd, mean + sd, color=colour, alpha=0.2, lw=0)
        ax.plot(t["fraction"], mean, color=colour, marker="o", lw=2,
                label=f"{run_label(t['name'].iat[0], t['depth'].iat[0])} (n = {t['repeats'].max()} repeats)")
        ax.scatter(points["fraction"], points[metric], color=colour, s=12, alpha=0.5, lw=0)
    ticks = done.groupby("fraction")["n_patients"].mean()
    ax.set_xscale("log")
    ax.set_xticks(ticks.index, [f"{f:.0%}\n{n:g} pts" for f, n in ticks.items()], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("training patients (fraction of the training pool)", fontsize=9)
    ax.set_ylabel(f"test {heading(metric)}", fontsize=9)
    if _at_most_one(metric):
        ax.set_ylim(min(0.0, float(done[metric].min())), 1.0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.set_title("Label efficiency: mean ± SD over repeats, dots = single repeats", fontsize=9)
    return fig


def write_label_efficiency_report(root: Path, out: Path, *, metric: str = "macro_f1",
                                  log: Callable[[str], None] = print) -> list[Path]:
    """table3 and fig7 from OUT/label_efficiency.csv."""
    df = load_label_efficiency(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = table3_label_efficiency(df, metric)
    written = [atomic.write_csv(out / "table3_label_efficiency.csv", table),
               atomic.write_text(out / "table3_label_efficiency.md", table3_markdown(table))]
    try:
        fig = fig7_label_efficiency(df, metric)
        written += [save_figure(fig, out / f"fig7_label_efficiency{suffix}") for suffix in (".png", ".pdf")]
    except FigureUnavailable as exc:
        log(f"fig7_label_efficiency skipped: {exc}")
    unfinished = df[~df["status"].isin(FINISHED)]
    if len(unfinished):
        log("not finished, not in the curve: " + ", ".join(f"{r.run} at fraction {r.fraction:g} repeat {r.repeat}"
                                                           for r in unfinished.itertuples()))
    for p in written:
        log(f"wrote {p}")
    log(f"per-subset tables and figures: python -m benchmark.report {root}/frac<F>/rep<R>")
    return written

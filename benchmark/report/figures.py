"""The figures drawn from result files alone: training curves (fig3), confusion matrices (fig4_confusion), the best
and worst runs per depth (fig4_selection), predicted against true target (fig4_scatter); and the style every report
figure shares."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from data_prep import atomic
from ..errors import FigureUnavailable
from .columns import heading
from .results import Results, Run, confusion, done_runs, rank_key

# Okabe-Ito: distinguishable with every common colour-vision deficiency
OKABE_ITO = {"orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442", "blue": "#0072B2",
             "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}
CLASS_STYLE = {"OAP": (OKABE_ITO["orange"], "o"), "IN": (OKABE_ITO["blue"], "s"), "OBS": (OKABE_ITO["green"], "^")}
EXTRA_STYLES = [(OKABE_ITO[c], m) for c, m in (("vermillion", "D"), ("purple", "v"), ("sky", "P"), ("black", "X"))]
CONFUSION_CMAP = "cividis"
DPI = 150


def class_style(classes: Sequence[str], k: int) -> tuple[str, str]:
    """(colour, marker) of the k-th class: the paper's three classes keep theirs, other class sets cycle the rest."""
    return CLASS_STYLE.get(classes[k], EXTRA_STYLES[k % len(EXTRA_STYLES)])


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a figure atomically (temporary name in the same folder, then rename); the format follows the suffix."""
    return atomic.atomic_write(path, lambda p: fig.savefig(p, dpi=DPI, format=path.suffix[1:], bbox_inches="tight"))


def panel_grid(n: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure of n panels of size `panel` (inches), at most `ncols` a row; the unused ones hidden."""
    ncols = max(1, min(n, ncols))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    for ax in axes.flat[n:]:
        ax.set_axis_off()
    return fig, axes


CURVE_STYLE = {"loss": ("training loss", OKABE_ITO["blue"], "-"),
               "val_loss": ("validation loss", OKABE_ITO["vermillion"], "--"),
               "val_accuracy": ("validation accuracy", OKABE_ITO["green"], ":")}
SELECTION_STYLE = (OKABE_ITO["purple"], "-.")
BASELINE_STYLE = ("validation MAE of the training mean", "0.45", ":")


def _curve_styles(run: Run) -> dict[str, tuple[str, str, str]]:
    """The three curves of the paper, plus the selection metric when it is another one (e.g. macro-F1), so that the
    selected epoch can be read off the figure. A regression has no accuracy; its validation MAE (the selection
    metric) comes with the MAE of predicting the fold's training mean, the level a useful model stays below."""
    styles = {k: v for k, v in CURVE_STYLE.items() if k in run.history}
    metric = run.selection["metric"]
    if metric not in styles and metric in run.history:
        styles[metric] = (f"validation {heading(metric.removeprefix('val_'))} (selection)", *SELECTION_STYLE)
    if run.task == "regression" and "val_mae_mean_baseline" in run.history:
        styles["val_mae_mean_baseline"] = BASELINE_STYLE
    return styles


def _robust_top(values: list[np.ndarray]) -> float | None:
    """An upper axis limit that a diverging fold does not set alone (far outliers are clipped)."""
    v = np.concatenate(values) if values else np.zeros(0)
    v = v[np.isfinite(v)]
    return max(1e-3, min(v.max(), 3 * np.percentile(v, 90))) * 1.05 if v.size else None


def fig3_curves(results: Results, lr: float | None = None, runs: Sequence[str] | None = None) -> Figure:
    """One panel per run: per-fold curves (faint) and their fold mean (bold) at the selected LR, or at `lr`.

    Losses on the left axis; validation accuracy (and the selection metric, if another) on the right (0-1), for a
    regression its validation MAE in the target's units; the dotted grey line marks the selected epoch count when
    the panel shows the selected LR.
    """
    chosen = [results.get(n) for n in runs] if runs else done_runs(results)
    regression = chosen[0].task == "regression" if chosen else False
    fig, axes = panel_grid(len(chosen), 6, (3.0, 2.4))
    ncols = axes.shape[1]
    legend: dict[str, tuple[str, str]] = {}
    for i, r in enumerate(chosen):
        ax = axes.flat[i]
        sel = r.selection
        want = sel["lr"] if lr is None else lr
        h = r.history[np.isclose(r.history["lr"], want, rtol=1e-9, atol=0)]
        if h.empty:
            ax.set_axis_off()
            ax.set_title(f"{r.title}\nLR {want:g} not in its grid", fontsize=8)
            continue
        score_ax = ax.twinx()
        losses, scores = [], []
        for key, (name, colour, style) in _curve_styles(r).items():
            legend[name] = (colour, style)
            target = ax if key in ("loss", "val_loss") else score_ax
            for _, fold in h.groupby("fold"):
                target.plot(fold["epoch"], fold[key], color=colour, ls=style, lw=0.8, alpha=0.3)
            mean = h.groupby("epoch")[key].agg(["mean", "count"])
            mean = mean[mean["count"] == h["fold"].nunique()]
            target.plot(mean.index, mean["mean"], color=colour, ls=style, lw=2.0)
            (losses if target is ax else scores).append(h[key].to_numpy(dtype=float))
        # a diverging fold would flatten every other curve: clip far outliers
        if (top := _robust_top(losses)) is not None:
            ax.set_ylim(0, top)
        score_ax.set_ylim(0, (_robust_top(scores) or 1.0) if regression else 1.02)
        selected = np.isclose(want, sel["lr"], rtol=1e-9, atol=0)
        if selected:
            ax.axvline(sel["epochs"], color="0.5", ls=(0, (1, 2)), lw=1)
        ax.set_title(f"{r.title}\nLR {want:g}" + (" (selected)" if selected else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        score_ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
        col, last_row = i % ncols, i + ncols >= len(chosen)
        if col == 0:
            ax.set_ylabel("loss", fontsize=8)
        if col == ncols - 1 or i == len(chosen) - 1:
            score_ax.set_ylabel(f"validation MAE ({r.config['target']})" if regression else "validation score",
                                fontsize=8)
        if last_row:
            ax.set_xlabel("epoch", fontsize=8)
    handles = [Line2D([], [], color=c, ls=s, lw=2, label=name) for name, (c, s) in legend.items()]
    handles += [Line2D([], [], color="0.3", lw=0.8, alpha=0.4, label="one fold"),
                Line2D([], [], color="0.3", lw=2, label="fold mean"),
                Line2D([], [], color="0.5", ls=(0, (1, 2)), lw=1, label="selected epochs")]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4), fontsize=8, frameon=False)
    return fig


def _draw_confusion(ax, counts: np.ndarray, classes: Sequence[str], title: str, *, xlabel: bool = True,
                    ylabel: bool = True, fontsize: float = 8):
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = counts / counts.sum(axis=1, keepdims=True)
    image = ax.imshow(np.nan_to_num(frac), cmap=CONFUSION_CMAP, vmin=0, vmax=1)
    for t in range(len(classes)):
        for p in range(len(classes)):
            share = "–" if np.isnan(frac[t, p]) else f"{frac[t, p]:.0%}"
            ax.text(p, t, f"{counts[t, p]}\n{share}", ha="center", va="center", fontsize=fontsize,
                    color="black" if np.nan_to_num(frac[t, p]) > 0.55 else "white")
    ax.set_xticks(range(len(classes)), classes, fontsize=fontsize)
    ax.set_yticks(range(len(classes)), classes, fontsize=fontsize)
    if xlabel:
        ax.set_xlabel("predicted", fontsize=fontsize)
    if ylabel:
        ax.set_ylabel("true", fontsize=fontsize)
    ax.set_title(title, fontsize=fontsize)
    return image


def fig4_confusion(results: Results) -> Figure:
    """Every finished run's test confusion matrix: count and fraction of the true class in each cell."""
    runs = done_runs(results)
    fig, axes = panel_grid(len(runs), 6, (2.3, 2.4))
    ncols = axes.shape[1]
    image = None
    for i, r in enumerate(runs):
        image = _draw_confusion(axes.flat[i], confusion(r), r.classes,
                                f"{r.title}\nmacro-F1 {r.metric('macro_f1'):.3f}",
                                xlabel=i + ncols >= len(runs), ylabel=i % ncols == 0, fontsize=7)
    fig.colorbar(image, ax=axes, shrink=0.6, label="fraction of the true class")
    return fig


def selection_picks(results: Results) -> list[tuple[str, list[tuple[str, Run]]]]:
    """The paper's good/poor pairs: best and worst run by test macro-F1 at depth 0 and at depth 1.

    Rows are the first two of (depth 0, depth 1, from scratch) that have finished runs; a row with one run shows it
    once.
    """
    runs = done_runs(results)
    groups = [("depth 0", [r for r in runs if r.depth == 0]), ("depth 1", [r for r in runs if r.depth == 1]),
              ("from scratch", [r for r in runs if r.depth == "scratch"])]
    rows = []
    for title, group in [g for g in groups if g[1]][:2]:
        ranked = sorted(group, key=lambda r: rank_key(r.metric("macro_f1")))
        picks = [(f"best at {title}", ranked[0])]
        if len(ranked) > 1:
            picks.append((f"worst at {title}", ranked[-1]))
        rows.append((title, picks))
    return rows


def fig4_selection(results: Results) -> Figure:
    rows = selection_picks(results)
    fig = Figure(figsize=(7.2, 3.4 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), 2, squeeze=False))
    letters = iter("abcdefgh")
    image = None
    for i, (title, picks) in enumerate(rows):
        for j in range(2):
            ax = axes[i, j]
            if j >= len(picks):
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"only one finished run at {title}", ha="center", va="center",
                        transform=ax.transAxes, fontsize=9)
                continue
            caption, r = picks[j]
            image = _draw_confusion(ax, confusion(r), r.classes,
                                    f"({next(letters)}) {caption}: {r.title}\nmacro-F1 {r.metric('macro_f1'):.3f}, "
                                    f"accuracy {r.metric('accuracy'):.3f}", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label="fraction of the true class")
    return fig


def fig4_scatter(results: Results) -> Figure:
    """Predicted against true target of each finished run's test slices, coloured by slice class, with the identity
    line and the mean the baseline predicts; MAE, RMSE and R² beside the baseline MAE in each title."""
    runs = [r for r in done_runs(results) if r.has_target]
    if not runs:
        raise FigureUnavailable("no finished run regresses a target")
    fig, axes = panel_grid(len(runs), 4, (3.2, 3.2))
    classes = results.classes
    for i, r in enumerate(runs):
        ax = axes.flat[i]
        truth, pred, train_mean = r.target_arrays()
        labels = r.predictions["label"].to_numpy()
        for k, c in enumerate(classes):
            colour, marker = class_style(classes, k)
            mask = labels == c
            ax.scatter(truth[mask], pred[mask], s=9, c=colour, marker=marker, alpha=0.6, linewidths=0,
                       label=f"{c} (n={int(mask.sum())})")
        lo, hi = min(truth.min(), pred.min()), max(truth.max(), pred.max())
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=1, label="prediction = truth")
        ax.axhline(train_mean, color="0.5", ls=":", lw=1, label="training mean (baseline)")
        ax.set_aspect("equal", adjustable="datalim")
        m = r.metrics
        ax.set_title(f"{r.title}\nMAE {m['mae']:.4g} (baseline {m['mae_mean_baseline']:.4g}), RMSE {m['rmse']:.4g}, "
                     f"R² {m['r2']:.3f}", fontsize=8)
        ax.set_xlabel(f"true {r.config['target']}", fontsize=8)
        ax.set_ylabel(f"predicted {r.config['target']}", fontsize=8)
        ax.tick_params(labelsize=7)
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, [n.split(" (n=")[0] for n in names], loc="outside lower center", ncols=len(names),
               fontsize=8, frameon=False, title="test slices by class", title_fontsize=8)
    return fig

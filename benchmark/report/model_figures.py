"""The figures that re-run a run's model on its test images: t-SNE of the pooled features (fig5) and the Grad-CAM /
SmoothGrad grid (fig6). They need the run's model/model.keras and the dataset it used; when either is missing they
raise FigureUnavailable saying which.

Keras (and with it TensorFlow) is imported only once a model file has been found, so that importing this module, and
the report with it, imports no TensorFlow.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from data_prep import atomic
from data_prep.manifest import MANIFEST
from ..data import Dataset
from ..errors import BenchmarkInputError, FigureUnavailable
from ..layout import MODEL_FILE, MODEL_JSON, model_dir
from ..preprocess import Preprocessing
from ..registry import POOLED, get_spec
from ..tf_quiet import quiet_tensorflow
from .figures import class_style, panel_grid
from .results import Results, Run, confusion

CAM_CMAP = "inferno"
SALIENCY_CMAP = "viridis"
TSNE_EXACT_MAX = 500


def _keras():
    quiet_tensorflow()  # TensorFlow's C++ start-up lines would bury the report's own
    import keras
    return keras


def load_model(run: Run):
    path = model_dir(run.dir) / MODEL_FILE
    if not path.is_file():
        raise FigureUnavailable(f"{run.name}: no trained model ({path} is missing; results copied without model "
                                f"weights cannot show features or saliency)")
    return _keras().models.load_model(path, compile=False)


def run_preprocessing(run: Run) -> Preprocessing:
    """The Preprocessing the run's model saw (model/model.json, else config.json)."""
    info = model_dir(run.dir) / MODEL_JSON
    key = atomic.read_json(info)["preprocessing"] if info.is_file() else run.config["preprocessing"]
    return Preprocessing.from_key(key)


@functools.lru_cache(maxsize=4)
def _load_dataset(path: str) -> Dataset:
    return Dataset.load(path)


def run_dataset(run: Run, data: str | Path | None = None) -> Dataset:
    """The dataset holding the run's test rows (config.json data, its test_data if any, or `data`), checked by hash."""
    desc = run.config.get("data", {})
    recorded = desc.get("test_data") or desc
    path = Path(data) if data is not None else Path(recorded.get("path", ""))
    if not (path / MANIFEST).is_file():
        raise FigureUnavailable(f"{run.name}: dataset {path} not found (the images are needed for t-SNE and "
                                f"Grad-CAM only; pass --data DIR to point at the dataset directory the run used)")
    ds = _load_dataset(str(path.resolve()))
    if recorded.get("manifest_sha256") and ds.manifest_sha256 != recorded["manifest_sha256"]:
        raise FigureUnavailable(f"{run.name}: {path / MANIFEST} differs from the manifest the run used "
                                f"(sha256 {ds.manifest_sha256[:12]} vs {recorded['manifest_sha256'][:12]})")
    return ds


def dataset_rows(ds: Dataset, predictions: pd.DataFrame) -> np.ndarray:
    """Row index in ds.rows of each prediction (matched on patient, frame, slice)."""
    keys = ds.rows[["patient", "frame", "slice"]].astype({"patient": str, "frame": str, "slice": np.int64})
    where = pd.Series(np.arange(len(keys)), index=pd.MultiIndex.from_frame(keys))
    wanted = pd.MultiIndex.from_frame(
        predictions[["patient", "frame", "slice"]].astype({"patient": str, "frame": str, "slice": np.int64}))
    found = where.reindex(wanted)
    if found.isna().any():
        first = wanted[np.flatnonzero(found.isna().to_numpy())[0]]
        raise FigureUnavailable(f"test slice {first} is not in dataset {ds.root}")
    return found.to_numpy(dtype=np.int64)


def model_inputs(run: Run, rows: np.ndarray, ds: Dataset) -> np.ndarray:
    """Exactly the preprocessed inputs the model saw at test time."""
    prep = run_preprocessing(run)
    return ds.make_inputs(rows, prep).astype(np.float32)


def pooled_features(run: Run, data: str | Path | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """(n_test, width) output of the layer "pooled" of the run's model on its test set, and the predictions rows."""
    model = load_model(run)
    ds = run_dataset(run, data)
    preds = run.predictions
    x = model_inputs(run, dataset_rows(ds, preds), ds)
    probe = _keras().Model(model.inputs, model.get_layer(POOLED).output)
    return probe.predict(x, batch_size=64, verbose=0), preds


def fig5_tsne(results: Results, runs: Sequence[str] | None = None, data: str | Path | None = None,
              seed: int = 0) -> Figure:
    """t-SNE (seeded, PCA start) of the pooled test features of each run (default: the best run), by true class."""
    from sklearn.manifold import TSNE
    chosen = [results.get(n) for n in runs] if runs else [results.best()]
    fig, axes = panel_grid(len(chosen), 3, (4.2, 4.0))
    for ax, r in zip(axes.flat, chosen):
        feats, preds = pooled_features(r, data)
        n = len(feats)
        if n < 5:
            raise FigureUnavailable(f"{r.name}: {n} test images are too few for t-SNE")
        # exact t-SNE beats Barnes-Hut in time below a few hundred points (measured), and is exact
        emb = TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=seed,
                   method="exact" if n <= TSNE_EXACT_MAX else "barnes_hut").fit_transform(feats.astype(np.float64))
        wrong = (preds["label"] != preds["prediction"]).to_numpy()
        for k, c in enumerate(r.classes):
            colour, marker = class_style(r.classes, k)
            mask = (preds["label"] == c).to_numpy()
            ax.scatter(emb[mask & ~wrong, 0], emb[mask & ~wrong, 1], s=14, c=colour, marker=marker, alpha=0.8,
                       linewidths=0, label=f"{c} (n={int(mask.sum())})")
            ax.scatter(emb[mask & wrong, 0], emb[mask & wrong, 1], s=22, c=colour, marker=marker,
                       edgecolors="black", linewidths=1.0)
        ax.scatter([], [], s=22, c="white", marker="o", edgecolors="black", linewidths=1.0,
                   label=f"misclassified ({int(wrong.sum())})")
        ax.set_title(f"{r.title}: pooled features of the test set\nmacro-F1 {r.metric('macro_f1'):.3f}",
                     fontsize=9)
        ax.set_xlabel("t-SNE 1", fontsize=8)
        ax.set_ylabel("t-SNE 2", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, title="true class", title_fontsize=7, loc="best")
    return fig


def other_model(run: Run) -> str | None:
    """Why the per-slice network in a run's model.keras is not what made its test predictions (a stack-context run:
    the stack model over whole stacks; a segmentation run: the range model over predicted masks), or None."""
    if "stack_model" in run.config:
        return (f"{run.name} is a stack-context run: its predictions come from the stack model over whole stacks, "
                f"not from the per-slice network its model.keras holds (run {run.config['stack_model']['base_run']})")
    if "segment_model" in run.config:
        return f"{run.name} is a segmentation run: its slice labels come from predicted masks, not a classifier"
    return None


def default_cam_run(results: Results) -> Run:
    """VGG16 (the paper's Grad-CAM network) at its better depth if it finished, else the best run; either among the
    runs whose predictions their own per-slice network made, the network Grad-CAM explains."""
    runs = [r for r in results.done if other_model(r) is None]
    if not runs:
        raise FigureUnavailable(f"{results.root}: no finished run whose predictions a per-slice classifier made")
    vgg = [r for r in runs if r.config["backbone"] == "vgg16"]
    return results.best(vgg or runs)


@dataclass
class CamGrid:
    """What fig6 shows: counts (true x predicted), and per non-empty cell the chosen test row and its maps."""

    run: Run
    counts: np.ndarray
    picks: dict[tuple[int, int], int]      # (true, predicted) -> row in test_predictions.csv
    images: dict[tuple[int, int], np.ndarray]
    gradcam: dict[tuple[int, int], np.ndarray]
    saliency: dict[tuple[int, int], np.ndarray]
    layer: str                              # the CAM layer
    methods: tuple[str, str]
    max_output_diff: float


def cam_picks(run: Run) -> dict[tuple[int, int], int]:
    """Per (true, predicted) cell the test image of median confidence in the prediction: a typical member."""
    df = run.predictions
    picks = {}
    for t, tc in enumerate(run.classes):
        for p, pc in enumerate(run.classes):
            cell = df[(df["label"] == tc) & (df["prediction"] == pc)]
            if len(cell):
                ordered = cell[f"p_{pc}"].sort_values(kind="stable")
                picks[(t, p)] = int(ordered.index[len(ordered) // 2])
    return picks


def cam_grid(run: Run, data: str | Path | None = None, samples: int = 20, seed: int = 0) -> CamGrid:
    """Grad-CAM (registry CAM layer) and SmoothGrad for the predicted class of one image per confusion cell."""
    if other_model(run):
        raise FigureUnavailable(f"{other_model(run)}; Grad-CAM of that network would explain another model than "
                                f"the run's (--gradcam-run names a per-slice run)")
    if run.task != "classification":
        raise FigureUnavailable(f"{run.name} is a {run.task} model: Grad-CAM here reads a classifier's pre-softmax "
                                f"logits, which a multi-task model's shared output does not expose")
    counts = confusion(run)
    if run.metrics.get("confusion") is not None and counts.tolist() != run.metrics["confusion"]:
        raise BenchmarkInputError(f"{run.dir}: test_predictions.csv and test_metrics.json disagree on the "
                                  f"confusion matrix")
    model = load_model(run)
    from ..gradcam import explain  # both import Keras, which load_model has imported without TensorFlow's noise
    from ..models import cam_layer_name
    ds = run_dataset(run, data)
    picks = cam_picks(run)
    cells = list(picks)
    preds = run.predictions.loc[[picks[c] for c in cells]]
    x = model_inputs(run, dataset_rows(ds, preds), ds)
    targets = [p for _, p in cells]
    layer = cam_layer_name(model, get_spec(run.config["backbone"]))
    maps = explain(model, x, targets, layer, samples=samples, seed=seed)
    recorded = preds[[f"p_{c}" for c in run.classes]].to_numpy(dtype=np.float64)
    diff = float(np.abs(model.predict(x, verbose=0) - recorded).max())
    return CamGrid(run, counts, picks, dict(zip(cells, x)), dict(zip(cells, maps.gradcam)),
                   dict(zip(cells, maps.saliency)), layer, (maps.gradcam_method, maps.saliency_method), diff)


def _grey(x: np.ndarray) -> np.ndarray:
    """The slice as the network saw it (middle channel: the slice itself also for 2.5D input), scaled to [0, 1]."""
    g = x[..., x.shape[-1] // 2]
    return (g - g.min()) / (g.max() - g.min() + 1e-12)


def fig6_gradcam(grid: CamGrid) -> Figure:
    """3x3 truth x prediction grid: per cell the count of test images, a typical image with its Grad-CAM overlay
    and its SmoothGrad map (both for the predicted class)."""
    run, classes = grid.run, grid.run.classes
    k = len(classes)
    fig = Figure(figsize=(4.0 * k + 1.0, 2.3 * k + 0.8), layout="constrained")
    cells_fig, bar_fig = fig.subfigures(1, 2, width_ratios=[4.0 * k, 1.0])
    cells = np.atleast_2d(cells_fig.subfigures(k, k, wspace=0.01, hspace=0.01))
    images = {}
    preds = run.predictions
    for t in range(k):
        for p in range(k):
            cell, n = cells[t, p], int(grid.counts[t, p])
            cell.set_facecolor("#E8EEF4" if t == p else "white")
            axes = cell.subplots(1, 2)
            for ax in axes:
                ax.set_xticks([])
                ax.set_yticks([])
            head = f"true {classes[t]} → predicted {classes[p]}: n = {n}"
            weight = "bold" if t == p else "normal"
            if (t, p) not in grid.picks:
                for ax in axes:
                    ax.set_axis_off()
                axes[0].text(1.0, 0.5, "no test image", ha="center", va="center", transform=axes[0].transAxes,
                             fontsize=8, color="0.4")
                cell.suptitle(f"{head}\n", fontsize=8, fontweight=weight)
                continue
            row = preds.loc[grid.picks[(t, p)]]
            axes[0].imshow(_grey(grid.images[(t, p)]), cmap="gray", vmin=0, vmax=1)
            images["cam"] = axes[0].imshow(grid.gradcam[(t, p)], cmap=CAM_CMAP, alpha=0.45, vmin=0, vmax=1)
            images["sal"] = axes[1].imshow(grid.saliency[(t, p)], cmap=SALIENCY_CMAP, vmin=0, vmax=1)
            axes[0].set_xlabel("image + Grad-CAM", fontsize=7)
            axes[1].set_xlabel("SmoothGrad", fontsize=7)
            cell.suptitle(f"{head}\n{row.patient} {row.frame} slice {row.slice}, "
                          f"p({classes[p]}) = {row[f'p_{classes[p]}']:.2f}", fontsize=8, fontweight=weight)
    if images:
        bars = bar_fig.subplots(2, 1)
        # the overlay is translucent; its colour bar shows the opaque map
        bar_fig.colorbar(ScalarMappable(images["cam"].norm, CAM_CMAP), cax=bars[0], label="Grad-CAM (overlay)")
        bar_fig.colorbar(images["sal"], cax=bars[1], label="SmoothGrad")
    else:
        bar_fig.set_visible(False)
    note = (f"{run.title} (run {run.name}, whose network made its test predictions; macro-F1 "
            f"{run.metric('macro_f1'):.3f}). Rows: true class; columns: predicted class; "
            f"n: test images in the cell (the confusion matrix). Each cell: the image of median confidence, "
            f"Grad-CAM ({grid.methods[0]}) of layer {grid.layer} and SmoothGrad ({grid.methods[1]}), for the "
            f"predicted class.")
    if grid.max_output_diff > 0.05:
        note += (f"\nWARNING: this model's outputs differ from test_predictions.csv by up to "
                 f"{grid.max_output_diff:.2f}: the maps may not be those of the run's model.")
    fig.suptitle(note, fontsize=9, wrap=True)
    return fig

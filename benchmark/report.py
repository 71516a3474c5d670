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
"""
from __future__ import annotations

import os

from .tf_quiet import quiet_tensorflow

quiet_tensorflow()  # the tables import the engine, and with it TensorFlow: without its C++ start-up lines

import argparse
import functools
import hashlib
import json
import math
import sys
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from data_prep import atomic
from .data import Dataset
from .errors import BenchmarkInputError
from .baselines import BASELINES, CONSTANT
from .metrics import bootstrap_ci, classification_metrics, range_metrics, regression_metrics, soft_correct
from .preprocess import Preprocessing
from .summary import label_efficiency_summary
from .layout import (DONE, FINISHED, LABEL_EFFICIENCY, RESULTS_FORMAT, TARGET_PREDICTION, check_writable,
                     run_order)
from .registry import POOLED, get_spec

# Okabe-Ito: distinguishable with every common colour-vision deficiency
OKABE_ITO = {"orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73", "yellow": "#F0E442", "blue": "#0072B2",
             "vermillion": "#D55E00", "purple": "#CC79A7", "black": "#000000"}
CLASS_STYLE = {"OAP": (OKABE_ITO["orange"], "o"), "IN": (OKABE_ITO["blue"], "s"), "OBS": (OKABE_ITO["green"], "^")}
EXTRA_STYLES = [(OKABE_ITO[c], m) for c, m in (("vermillion", "D"), ("purple", "v"), ("sky", "P"), ("black", "X"))]
CONFUSION_CMAP = "cividis"
CAM_CMAP = "inferno"
SALIENCY_CMAP = "viridis"
DPI = 150
TSNE_EXACT_MAX = 500

# (key, heading); lower is better only for the boundary errors
CLASS_METRICS = [("macro_f1", "macro F1"), ("auc_micro", "micro AUC"), ("auc_weighted", "weighted AUC"),
                 ("accuracy", "accuracy"), ("soft_accuracy", "soft accuracy")]
RANGE_METRICS = [("range_exact", "range exact"), ("range_within1", "range ±1"), ("boundary_mae", "boundary MAE")]
REGRESSION_METRICS = [("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"), ("mae_mean_baseline", "baseline MAE")]
LOWER_IS_BETTER = {"boundary_mae", "mae", "rmse"}
NOT_RANKED = {"mae_mean_baseline"}  # the same reference for every run, not a result of one
CONFIG_KEYS = ("backbone", "depth", "classes", "preprocessing")
NO_AUC_PREFIX = "mono_"  # monotone decoding changes labels, not probabilities: its AUCs are the argmax ones
DECODED_PREFIX = "dec_"  # the decoding chosen on validation: the run's headline IN-range figures
# key prefix -> the test_metrics.json section it reads ("" the top level, the argmax)
SECTIONS = {"": "", NO_AUC_PREFIX: "monotone", DECODED_PREFIX: "decoded"}
DECODED_METRICS = ["macro_f1"] + [k for k, _ in RANGE_METRICS]
BASELINE_DEPTH = "baseline"


class FigureUnavailable(Exception):
    """A figure cannot be drawn from what is on disk (no model file, no dataset); the message says what is missing."""


# ---- reading a results directory ------------------------------------------------------------------------------------
@dataclass
class Run:
    """One model run directory OUT/<run>/ as the engine wrote it."""

    dir: Path
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def done(self) -> bool:
        return (self.dir / DONE).is_file()

    @property
    def status(self) -> str:
        if self.done:
            return "done"
        return "failed" if (self.dir / "error.txt").is_file() else "incomplete"

    @property
    def depth(self):
        return self.config["depth"]

    @property
    def network(self) -> str:
        return self.config.get("backbone_name", self.config["backbone"])

    @property
    def label(self) -> str:
        return self.network if self.depth == "scratch" else f"{self.network} d{self.depth}"

    @property
    def title(self) -> str:
        """The label for figures, flagging a pretrained network that ran without its ImageNet weights."""
        random_init = self.depth != "scratch" and self.config.get("weights") == "none"
        return f"{self.label} (random init)" if random_init else self.label

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.config["classes"])

    @property
    def task(self) -> str:
        return self.config.get("task", "classification")

    @property
    def has_classes(self) -> bool:
        return self.task != "regression"

    @property
    def has_target(self) -> bool:
        return self.task != "classification"

    def target_arrays(self) -> tuple[np.ndarray, np.ndarray, float]:
        """True and predicted target of the test rows, and the training pool's mean (the baseline's prediction)."""
        df = self.predictions
        return (df["target"].to_numpy(dtype=np.float64), df[TARGET_PREDICTION[self.task]].to_numpy(dtype=np.float64),
                float(self.config["target_standardisation"]["mean"]))

    @property
    def input_px(self) -> int:
        return Preprocessing.from_key(self.config["preprocessing"]).input_size

    def _json(self, name: str) -> dict[str, Any]:
        path = self.dir / name
        try:
            value = atomic.read_json(path)
        except FileNotFoundError:
            raise BenchmarkInputError(f"{path} is missing although {self.dir / DONE} exists") from None
        except json.JSONDecodeError as exc:
            raise BenchmarkInputError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise BenchmarkInputError(f"{path}: expected a JSON object, got {type(value).__name__}")
        return value

    def _csv(self, name: str, **kwargs) -> pd.DataFrame:
        path = self.dir / name
        try:
            return pd.read_csv(path, **kwargs)
        except FileNotFoundError:
            raise BenchmarkInputError(f"{path} is missing although {self.dir / DONE} exists") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise BenchmarkInputError(f"{path}: not a readable CSV ({exc})") from None

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return self._json("test_metrics.json")

    @cached_property
    def selection(self) -> dict[str, Any]:
        return self._json("selection.json")

    @cached_property
    def timing(self) -> dict[str, Any]:
        return self._json("timing.json")

    @cached_property
    def history(self) -> pd.DataFrame:
        return self._csv("cv_history.csv")

    @cached_property
    def predictions(self) -> pd.DataFrame:
        labels = ("label", "prediction") if self.has_classes else ("label",)  # a regression predicts a number
        text = {c: str for c in ("patient", "frame", "monotone", *labels)}
        df = self._csv("test_predictions.csv", dtype=text, keep_default_na=False)
        need = ["patient", "frame", "slice", "label"]
        need += ["prediction", *(f"p_{c}" for c in self.classes)] if self.has_classes else []
        need += ["target", TARGET_PREDICTION[self.task]] if self.has_target else []
        missing = [c for c in need if c not in df]
        if missing:
            raise BenchmarkInputError(f"{self.dir / 'test_predictions.csv'}: missing column(s) {', '.join(missing)}")
        unknown = sorted(set().union(*(set(df[c]) for c in labels)) - set(self.classes))
        if unknown:
            raise BenchmarkInputError(f"{self.dir / 'test_predictions.csv'}: labels {unknown} are not among the "
                                      f"run's classes {list(self.classes)}")
        return df

    def metric(self, key: str, monotone: bool = False, section: str = "") -> float:
        """A test metric from test_metrics.json (`section`: "monotone", "decoded" or the top level); NaN when
        absent. Older files prefix the range keys with range_."""
        section = "monotone" if monotone else section
        m = self.metrics.get(section, {}) if section else self.metrics
        value = m.get(key, m.get(f"range_{key}"))
        return float("nan") if value is None else float(value)


@dataclass
class Results:
    root: Path
    runs: list[Run]          # every run directory, in the paper's order

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.done]

    def get(self, name: str) -> Run:
        for r in self.runs:
            if r.name == name:
                return r
        raise BenchmarkInputError(f"no run {name!r} in {self.root}; runs: {', '.join(r.name for r in self.runs)}")

    @property
    def classes(self) -> tuple[str, ...]:
        found = {r.classes for r in self.done}
        if len(found) > 1:
            raise BenchmarkInputError(f"{self.root}: runs use different classes ({sorted(found)}); one report "
                                      f"covers one class set")
        return found.pop()

    @property
    def task(self) -> str:
        found = {(r.task, r.config.get("target")) for r in self.done}
        if len(found) > 1:
            raise BenchmarkInputError(f"{self.root}: runs of different tasks ({sorted(found, key=str)}); one report "
                                      f"covers one task")
        return found.pop()[0]

    def best(self, runs: Sequence[Run] | None = None) -> Run:
        """Highest test macro-F1 (NaN last; ties: the paper's order)."""
        pool = list(self.done if runs is None else runs)
        if not pool:
            raise BenchmarkInputError(f"{self.root}: no finished run")
        return min(pool, key=lambda r: _rank_key(r.metric("macro_f1")))


def _rank_key(value: float) -> float:
    return math.inf if math.isnan(value) else -value


def load_results(path: str | Path) -> Results:
    """Read a results directory written by `python -m benchmark`; BenchmarkInputError with one message if it is not."""
    root = Path(path)
    if not root.is_dir():
        raise BenchmarkInputError(f"{root} is not a directory (give a results directory written by "
                                  f"`python -m benchmark --out DIR`)")
    runs = []
    for d in sorted(p for p in root.iterdir() if (p / "config.json").is_file()):
        try:
            config = atomic.read_json(d / "config.json")
        except json.JSONDecodeError as exc:
            raise BenchmarkInputError(f"{d / 'config.json'}: not valid JSON ({exc})") from None
        fmt = config.get("results_format") if isinstance(config, dict) else None
        if fmt != RESULTS_FORMAT:
            raise BenchmarkInputError(
                f"{d / 'config.json'}: results_format {fmt!r} is not one this report reads (it reads format "
                f"{RESULTS_FORMAT}); report it with the code version that wrote it")
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing:
            raise BenchmarkInputError(f"{d / 'config.json'}: missing {', '.join(missing)}")
        runs.append(Run(d, config))
    if not runs:
        raise BenchmarkInputError(f"{root} is not a results directory: no <run>/config.json in it (expected "
                                  f"OUT/<backbone>_d<depth>/ folders written by `python -m benchmark --out OUT`)")
    runs.sort(key=lambda r: (run_order(r.name), r.name))
    return Results(root, runs)


def _done_runs(results: Results) -> list[Run]:
    runs = results.done
    if not runs:
        raise BenchmarkInputError(f"{results.root}: no finished run (a run is finished when <run>/{DONE} exists; "
                                  f"{len(results.runs)} run folder(s) are {', '.join(sorted({r.status for r in results.runs}))})")
    return runs


TIMED_PHASES = ("feature_pass_s", "cv_s", "foldinit_s", "final_s", "test_s")


# ---- table 1: time --------------------------------------------------------------------------------------------------
def table1_time(results: Results) -> pd.DataFrame:
    """Seconds per phase of each finished run (timing.json: the sum of its jobs' times, wherever they ran)."""
    rows = []
    for r in _done_runs(results):
        t = r.timing
        row = {"run": r.name, "network": r.network, "depth": r.depth, "input_px": r.input_px,
               "weights": r.config.get("weights")}
        for key in TIMED_PHASES:
            row[key] = float(t[key]) if key in t else float("nan")
        phases = [row[k] for k in TIMED_PHASES]
        row["total_s"] = float(np.nansum(phases)) if not all(math.isnan(v) for v in phases) else float("nan")
        row["total_min"] = row["total_s"] / 60
        rows.append(row)
    return pd.DataFrame(rows)


def table1_markdown(df: pd.DataFrame) -> str:
    head = ["network", "depth", "input (px)", "feature pass (s)", "CV (s)", "fold models (s)", "final fit (s)",
            "test (s)", "total (min)"]
    lines = _md_header(head)
    for _, r in df.iterrows():
        lines.append(_md_row([r.network, str(r.depth), str(r.input_px), _num(r.feature_pass_s, 1), _num(r.cv_s, 1),
                              _num(r.foldinit_s, 1), _num(r.final_s, 1), _num(r.test_s, 1), _num(r.total_min, 2)]))
    total = df["total_s"].sum() / 60
    return ("\n".join(lines) + f"\n\nEach phase is the sum of its jobs' times: the feature pass (the frozen part run "
            f"once over the images on the cached path), the CV fits, the depth-0 fold models that depth-1 folds "
            f"start from, the final fit and the test. Total = {total:.1f} min over {len(df)} runs (machine time, "
            f"not wall time when jobs ran in parallel). A phase a run does not have is shown as —.\n")


# ---- table 2: test metrics with confidence intervals ----------------------------------------------------------------
def _class_arrays(run: Run) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], pd.DataFrame]:
    """Truth, probabilities, predictions per decoding ("" argmax, "mono_" monotone) and stacks of the test rows."""
    df = run.predictions
    index = {c: i for i, c in enumerate(run.classes)}
    y = df["label"].map(index).to_numpy(dtype=np.int64)
    proba = df[[f"p_{c}" for c in run.classes]].to_numpy(dtype=np.float64)
    decodings = {"": df["prediction"].map(index).to_numpy(dtype=np.int64)}
    for prefix, section in SECTIONS.items():
        if prefix and section in df and section in run.metrics:
            decodings[prefix] = df[section].map(index).to_numpy(dtype=np.int64)
    stacks = df[["patient", "frame", "slice"]].astype({"slice": np.int64})
    return y, proba, decodings, stacks


def per_stack_range(y: np.ndarray, pred: np.ndarray, stacks: pd.DataFrame) -> pd.DataFrame:
    """range_metrics of each (patient, frame) stack alone: their NaN-mean over stacks is range_metrics of all.

    (A stack without a true IN slice gives NaN everywhere and drops out, as range_metrics leaves it out; a stack
    scored but without predicted IN has NaN boundary errors, which range_metrics also leaves out, and each scored
    stack weighs its two boundaries equally in both.)
    """
    records = []
    for (patient, frame), rows in stacks.groupby(["patient", "frame"], sort=True).indices.items():
        m = range_metrics(y[rows], pred[rows], stacks.iloc[rows])
        records.append({"patient": patient, "frame": frame, **{k: m[k] for k, _ in RANGE_METRICS}})
    return pd.DataFrame(records)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def bootstrap_intervals(run: Run, n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Patient-bootstrap 95 % CI (metrics.bootstrap_ci, seeded) of every test metric in table 2, from the predictions.

    Every metric is resampled with the same seed, hence the same patients in replicate b for all metrics;
    classification_metrics (regression_metrics) runs once per replicate and decoding (memoised on the drawn rows).
    Soft accuracy and the range metrics look at neighbouring slices, so their per-row / per-stack values are computed
    once on the whole test set and averaged over the drawn rows / stacks, as bootstrap_ci's docstring prescribes.
    """
    out = _class_intervals(run, n_boot, seed) if run.has_classes else {}
    if run.has_target:
        truth, pred, train_mean = run.target_arrays()
        scores = _memo(lambda idx: regression_metrics(truth[idx], pred[idx], train_mean))
        groups = run.predictions["patient"].to_numpy()
        for key, _ in REGRESSION_METRICS:
            out[key] = bootstrap_ci(lambda idx, key=key: scores(idx)[key], groups, n_boot, seed)
    return out


def _memo(fn: Callable[[np.ndarray], dict[str, Any]]) -> Callable[[np.ndarray], dict[str, Any]]:
    """fn of a row-index array, computed once per distinct array (every metric of a replicate shares one call)."""
    memo: dict[bytes, dict[str, Any]] = {}

    def call(idx: np.ndarray) -> dict[str, Any]:
        key = hashlib.blake2b(idx.tobytes(), digest_size=16).digest()
        if key not in memo:
            memo[key] = fn(idx)
        return memo[key]
    return call


def _class_intervals(run: Run, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    y, proba, decodings, stacks = _class_arrays(run)
    groups = stacks["patient"].to_numpy()
    out: dict[str, tuple[float, float]] = {}
    for prefix, pred in decodings.items():
        keys = [f"f1_{c.lower()}" for c in run.classes] + ["macro_f1", "accuracy"]
        if not prefix:
            keys += ["auc_micro", "auc_weighted"]
        out.update({prefix + k: ci for k, ci in _label_intervals(y, proba, pred, run.classes, groups, keys, n_boot,
                                                                  seed).items()})
        if "soft_accuracy" in run.metrics:
            correct = soft_correct(y, pred, stacks).astype(np.float64)
            out[prefix + "soft_accuracy"] = bootstrap_ci(lambda idx: float(correct[idx].mean()), groups, n_boot,
                                                         seed)
        if not math.isnan(run.metric("range_exact")):
            out.update({prefix + k: ci for k, ci in _range_intervals(y, pred, stacks, n_boot, seed).items()})
    return out


def _label_intervals(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, classes: Sequence[str], groups: np.ndarray,
                     keys: Sequence[str], n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """Patient-bootstrap CIs of classification_metrics `keys` of labels `pred`, one metrics call per replicate."""
    scores = _memo(lambda idx: classification_metrics(y[idx], proba[idx], classes, y_pred=pred[idx]))
    return {key: bootstrap_ci(lambda idx, key=key: scores(idx)[key], groups, n_boot, seed) for key in keys}


def _range_intervals(y: np.ndarray, pred: np.ndarray, stacks: pd.DataFrame, n_boot: int,
                     seed: int) -> dict[str, tuple[float, float]]:
    """Patient-bootstrap CIs of the IN-range metrics of labels `pred`, per-stack values computed once."""
    per_stack = per_stack_range(y, pred, stacks)
    groups = per_stack["patient"].to_numpy()
    return {key: bootstrap_ci(lambda idx, v=per_stack[key].to_numpy(dtype=np.float64): _nanmean(v[idx]), groups,
                              n_boot, seed) for key, _ in RANGE_METRICS}


def check_predictions(run: Run) -> list[str]:
    """Differences between test_metrics.json and the metrics recomputed from test_predictions.csv (none expected;
    predicted targets are stored to 6 significant digits, so their metrics agree to about 1e-6 relative)."""
    problems = []

    def compare(name: str, recorded: float, recomputed: float, tolerance: float) -> None:
        if not (math.isnan(recorded) and math.isnan(recomputed)) and not abs(recorded - recomputed) <= tolerance:
            problems.append(f"{name} {recorded:.6g} in test_metrics.json vs {recomputed:.6g} recomputed")

    if run.has_classes:
        y, proba, decodings, _ = _class_arrays(run)
        for prefix, pred in decodings.items():
            m = classification_metrics(y, proba, run.classes, y_pred=pred)
            for key in [f"f1_{c.lower()}" for c in run.classes] + ["macro_f1", "accuracy"]:
                compare(prefix + key, run.metric(key, section=SECTIONS[prefix]), m[key], 1e-6)
        if confusion(run).tolist() != run.metrics.get("confusion"):
            problems.append("the confusion matrix of test_predictions.csv differs from test_metrics.json")
    if run.has_target:
        m = regression_metrics(*run.target_arrays())
        for key in ("mae", "rmse", "mae_mean_baseline"):
            compare(key, run.metric(key), m[key], 1e-4 * max(1.0, abs(m[key])))
        compare("r2", run.metric("r2"), m["r2"], 1e-4)
    return problems


def cv_summary(run: Run) -> dict[str, Any]:
    """Fold mean and SD (n-1) of the selection metric and of validation accuracy (a classifier's) at the selected LR
    and epoch."""
    sel, h = run.selection, run.history
    at = h[np.isclose(h["lr"], sel["lr"], rtol=1e-9, atol=0) & (h["epoch"] == sel["epochs"])]
    out = {"cv_metric": sel["metric"], "cv_folds": int(at["fold"].nunique())}
    for name, col in (("cv", sel["metric"]), ("cv_accuracy", "val_accuracy")):
        if col not in at:
            continue
        values = at[col].astype(float)
        out[f"{name}_mean"] = float(values.mean()) if len(values) else float("nan")
        out[f"{name}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return out


def metric_keys(classes: Sequence[str], task: str = "classification") -> list[str]:
    """Table-2 metric columns: per-class F1, the class metrics, range metrics, then the same under monotone decoding
    (a classifier's); then the regression metrics (a regression's)."""
    base = [f"f1_{c.lower()}" for c in classes] + [k for k, _ in CLASS_METRICS] + [k for k, _ in RANGE_METRICS]
    mono = [NO_AUC_PREFIX + k for k in base if not k.startswith("auc_")]
    decoded = [DECODED_PREFIX + k for k in DECODED_METRICS]
    target = [k for k, _ in REGRESSION_METRICS] if task != "classification" else []
    return (base + mono + decoded if task != "regression" else []) + target


def split_key(key: str) -> tuple[str, str]:
    """(prefix, metric) of a table-2 key: "dec_range_exact" -> ("dec_", "range_exact")."""
    for prefix in (NO_AUC_PREFIX, DECODED_PREFIX):
        if key.startswith(prefix):
            return prefix, key[len(prefix):]
    return "", key


def _intervals_job(run_dir: str, config: dict[str, Any], n_boot: int, seed: int):
    return bootstrap_intervals(Run(Path(run_dir), config), n_boot, seed)


def all_intervals(runs: Sequence[Run], n_boot: int, seed: int, jobs: int = 1,
                  progress: bool = True) -> dict[str, dict[str, tuple[float, float]]]:
    """bootstrap_intervals of each run, in `jobs` worker processes when > 1 (the bootstrap is CPU-bound Python).

    Workers are spawned, not forked: the parent may hold TensorFlow threads, which do not survive a fork.
    """
    from tqdm import tqdm
    if n_boot == 0:
        return {r.name: {} for r in runs}
    bar = tqdm(total=len(runs), desc="bootstrap CIs", unit="run", disable=not progress)
    out: dict[str, dict[str, tuple[float, float]]] = {}
    if jobs <= 1 or len(runs) == 1:
        for r in runs:
            out[r.name] = bootstrap_intervals(r, n_boot, seed)
            bar.update()
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        with ProcessPoolExecutor(min(jobs, len(runs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_intervals_job, str(r.dir), r.config, n_boot, seed): r.name for r in runs}
            for f in as_completed(futures):
                out[futures[f]] = f.result()
                bar.update()
    bar.close()
    return out


def table2_test(results: Results, n_boot: int = 1000, seed: int = 0, progress: bool = True,
                jobs: int = 1) -> pd.DataFrame:
    """One row per finished run in the paper's order: point estimates (test_metrics.json), CIs as <key>_lo/_hi."""
    runs = _done_runs(results)
    classes = results.classes
    task = results.task
    keys = metric_keys(classes, task)
    intervals = all_intervals(runs, n_boot, seed, jobs, progress)
    rows = []
    for r in runs:
        for problem in check_predictions(r):
            print(f"warning: {r.name}: {problem}", file=sys.stderr)
        sel = r.selection
        row: dict[str, Any] = {"run": r.name, "network": r.network, "depth": r.depth, "weights": r.config.get("weights"),
                               "selected_lr": sel["lr"], "selected_epochs": sel["epochs"], **cv_summary(r)}
        for key in keys:
            prefix, base = split_key(key)
            row[key] = r.metric(base, section=SECTIONS[prefix])
            row[f"{key}_lo"], row[f"{key}_hi"] = intervals[r.name].get(key, (float("nan"), float("nan")))
        for c in classes if r.has_classes else ():
            row[f"support_{c.lower()}"] = r.metrics.get(f"support_{c.lower()}")
        if r.has_target:
            row["target"] = r.config["target"]
        row["n"] = r.metrics.get("n")
        rows.append(row)
    rows += baseline_rows(runs, n_boot, seed)
    df = pd.DataFrame(rows)
    if "dec_range_exact" in df:
        constant = df.loc[df["run"] == f"baseline_{CONSTANT}", "dec_range_exact"]
        beats = (df["dec_range_exact"] > constant.iat[0]).astype(object) if len(constant) else None
        df["beats_constant"] = beats.where(df["depth"] != BASELINE_DEPTH, None) if beats is not None else None
    empty = [k for k in keys if df[k].isna().all()]
    return df.drop(columns=[c for k in empty for c in (k, f"{k}_lo", f"{k}_hi")])


def baseline_rows(runs: Sequence[Run], n_boot: int, seed: int) -> list[dict[str, Any]]:
    """Table-2 rows of the baselines (benchmark.baselines) recorded with the first run that has them, scored on
    the same test stacks as every run: their decoded columns and patient-bootstrap CIs from that run's
    test_predictions.csv (column baseline_<name>)."""
    run = next((r for r in runs if r.has_classes and "baselines" in r.metrics), None)
    if run is None:
        return []
    df = run.predictions
    y, proba, _, stacks = _class_arrays(run)
    index = {c: i for i, c in enumerate(run.classes)}
    groups = stacks["patient"].to_numpy()
    out = []
    for name, m in run.metrics["baselines"].items():
        row: dict[str, Any] = {"run": f"baseline_{name}", "network": f"{BASELINES.get(name, name)} (baseline)",
                               "depth": BASELINE_DEPTH, "weights": None}
        row.update({DECODED_PREFIX + k: m.get(k, float("nan")) for k in DECODED_METRICS})
        column = f"baseline_{name}"
        if column in df and n_boot:
            pred = df[column].map(index).to_numpy(dtype=np.int64)
            intervals = {**_label_intervals(y, proba, pred, run.classes, groups, ["macro_f1"], n_boot, seed),
                         **_range_intervals(y, pred, stacks, n_boot, seed)}
            for key, (lo, hi) in intervals.items():
                row[f"{DECODED_PREFIX}{key}_lo"], row[f"{DECODED_PREFIX}{key}_hi"] = lo, hi
        out.append(row)
    return out


def best_mask(df: pd.DataFrame, key: str, decimals: int = 3) -> pd.Series:
    """Rows holding the best value of a column at the printed precision (ties all marked); none with < 2 values."""
    values = df[key].astype(float).round(decimals)
    if values.notna().sum() < 2 or key in NOT_RANKED:
        return pd.Series(False, index=df.index)
    best = values.min() if split_key(key)[1] in LOWER_IS_BETTER else values.max()
    return values == best


def _heading(key: str) -> str:
    prefix, base = split_key(key)
    names = dict(CLASS_METRICS + RANGE_METRICS + REGRESSION_METRICS)
    name = f"F1 {base[3:].upper()}" if base.startswith("f1_") else names.get(base, base.replace("_", " "))
    return name + {"": "", NO_AUC_PREFIX: " (mono)", DECODED_PREFIX: ""}[prefix]


def _table2_groups(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    keys = [k for k in metric_keys([c[len("support_"):] for c in df if c.startswith("support_")], "multi") if k in df]
    target = [k for k in keys if k in dict(REGRESSION_METRICS)]
    decoded = [k for k in keys if k.startswith(DECODED_PREFIX)]
    keys = [k for k in keys if k not in decoded]
    plain = [k for k in keys if not k.startswith(NO_AUC_PREFIX) and k not in dict(RANGE_METRICS) and k not in target]
    rng = [k for k in keys if k.removeprefix(NO_AUC_PREFIX) in dict(RANGE_METRICS)]
    mono = [k for k in keys if k.startswith(NO_AUC_PREFIX) and k not in rng]
    groups = [(DECODED_TITLE, decoded)] if decoded else []
    groups += [("Test set, argmax decoding", plain)] if plain else []
    if target:
        groups.append((f"Test set, regression of {df['target'].iat[0]}", target))
    if mono or rng:
        groups.append(("Monotone stack decoding and IN range", mono + rng))
    return groups


def table2_markdown(df: pd.DataFrame) -> str:
    supports = [c for c in df if c.startswith("support_")]
    parts = []
    groups = _table2_groups(df)
    first_plain = next((g for g, (title, _) in enumerate(groups) if title != DECODED_TITLE), 0)
    for g, (title, keys) in enumerate(groups):
        rows = df if title == DECODED_TITLE else df[df["depth"] != BASELINE_DEPTH]
        cv_name = _heading(df["cv_metric"].dropna().iat[0].removeprefix("val_")) if df["cv_metric"].notna().any() \
            else ""
        extra = [f"CV {cv_name} (mean ± SD)"] if g == first_plain else []
        head = ["network", "depth", "weights"] + [_heading(k) for k in keys] + extra + \
            ([f"n {c[len('support_'):].upper()}" for c in supports] if extra else [])
        lines = [f"### {title}", ""] + _md_header(head)
        marks = {k: best_mask(rows, k) for k in keys}
        for i, r in rows.iterrows():
            loses = title == DECODED_TITLE and r.get("beats_constant") is False
            cells = [r.network + (" †" if loses else ""), str(r.depth), weights_short(r.weights)]
            for k in keys:
                value = _num(r[k], 3)
                cells.append((f"**{value}**" if marks[k][i] else value) + _ci_text(r[f"{k}_lo"], r[f"{k}_hi"]))
            if extra:
                cells.append(f"{_num(r.cv_mean, 3)} ± {_num(r.cv_sd, 3)}")
                cells += [_num(r[c], 0) for c in supports]
            lines.append(_md_row(cells))
        parts.append("\n".join(lines))
    note = ("Point estimates from test_metrics.json; [95 % CI] from a patient-level bootstrap of "
            "test_predictions.csv; best value per column in bold (lowest for boundary MAE, in slices). CV: fold mean "
            "± SD of the selection metric at the selected learning rate and epoch count.")
    if "beats_constant" in df:
        note += (f" {DECODED_TITLE}: each run's probabilities decoded as chosen on its validation folds "
                 "(selection.json `decoding`); the baselines are scored on the same stacks: every slice IN, and a "
                 "model of the slice's position in its stack alone. † marks a run whose exact IN range does not "
                 "beat the every-slice-IN constant.")
    if "mae" in df:
        note += (" MAE and RMSE are in the target's units (lowest in bold); baseline MAE is the MAE of predicting "
                 "the training pool's mean target for every test slice, the figure a model has to beat.")
    return "\n\n".join(parts) + "\n\n" + note + "\n"


def table2_latex(df: pd.DataFrame) -> str:
    """booktabs tables (\\usepackage{booktabs}); CIs in brackets below each value."""
    out = ["% generated by python -m benchmark.report; needs \\usepackage{booktabs}"]
    for title, keys in _table2_groups(df):
        rows = df if title == DECODED_TITLE else df[df["depth"] != BASELINE_DEPTH]
        marks = {k: best_mask(rows, k) for k in keys}
        out += [r"\begin{table}[ht]", r"\centering", r"\scriptsize", f"\\caption{{{_tex(title)}}}",
                r"\begin{tabular}{lll" + "c" * len(keys) + "}", r"\toprule",
                " & ".join(["Network", "Depth", "Weights"] + [_tex(_heading(k)) for k in keys]) + r" \\",
                r"\midrule"]
        for i, r in rows.iterrows():
            loses = title == DECODED_TITLE and r.get("beats_constant") is False
            values, cis = [_tex(r.network + (" †" if loses else "")), _tex(str(r.depth)),
                           _tex(weights_short(r.weights))], ["", "", ""]
            for k in keys:
                v = _num(r[k], 3)
                values.append(f"\\textbf{{{v}}}" if marks[k][i] else v)
                lo, hi = r[f"{k}_lo"], r[f"{k}_hi"]
                cis.append("" if math.isnan(lo) else f"[{lo:.3f}, {hi:.3f}]")
            out.append(" & ".join(values) + r" \\")
            if any(cis):
                out.append(" & ".join(cis) + r" \\[2pt]")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


DECODED_TITLE = "IN range, decoding chosen on validation, beside the baselines"


def weights_short(weights: str | None) -> str:
    """config.json `weights` for a table cell: ImageNet, random init (a pretrained network run without its ImageNet
    file), scratch (CBR), or the file name given with --weights PATH."""
    if not isinstance(weights, str) or weights == "imagenet":  # a baseline row has none (NaN in a table)
        return "ImageNet" if isinstance(weights, str) else "—"
    if weights == "none":
        return "random init"
    if weights.startswith("none (trained from scratch)"):
        return "scratch"
    return Path(weights).name


def _num(v, decimals: int) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{decimals}f}"


def _ci_text(lo: float, hi: float) -> str:
    return "" if math.isnan(lo) else f" [{lo:.3f}, {hi:.3f}]"


def _md_header(head: list[str]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "α": r"$\alpha$",
                "±": r"$\pm$", "²": r"$^2$"}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


# ---- figures --------------------------------------------------------------------------------------------------------
def save_figure(fig: Figure, path: Path) -> Path:
    """Write a figure atomically (temporary name in the same folder, then rename); the format follows the suffix."""
    return atomic.atomic_write(path, lambda p: fig.savefig(p, dpi=DPI, format=path.suffix[1:], bbox_inches="tight"))


def _grid(n: int, ncols: int, panel: tuple[float, float]) -> tuple[Figure, np.ndarray]:
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
        styles[metric] = (f"validation {_heading(metric.removeprefix('val_'))} (selection)", *SELECTION_STYLE)
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
    chosen = [results.get(n) for n in runs] if runs else _done_runs(results)
    regression = chosen[0].task == "regression" if chosen else False
    fig, axes = _grid(len(chosen), 6, (3.0, 2.4))
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


def confusion(run: Run) -> np.ndarray:
    """Counts (true x predicted, classes in the run's order) from test_predictions.csv."""
    df = run.predictions
    index = {c: i for i, c in enumerate(run.classes)}
    counts = np.zeros((len(index), len(index)), dtype=np.int64)
    np.add.at(counts, (df["label"].map(index).to_numpy(), df["prediction"].map(index).to_numpy()), 1)
    return counts


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
    runs = _done_runs(results)
    fig, axes = _grid(len(runs), 6, (2.3, 2.4))
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
    runs = _done_runs(results)
    groups = [("depth 0", [r for r in runs if r.depth == 0]), ("depth 1", [r for r in runs if r.depth == 1]),
              ("from scratch", [r for r in runs if r.depth == "scratch"])]
    rows = []
    for title, group in [g for g in groups if g[1]][:2]:
        ranked = sorted(group, key=lambda r: _rank_key(r.metric("macro_f1")))
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


# ---- label efficiency: test metric against the fraction of training patients -----------------------------------------
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


def _le_label(name: str, depth: str) -> str:
    return name if depth == "scratch" else f"{name} d{depth}"


def _check_curve_metric(df: pd.DataFrame, metric: str) -> None:
    if metric not in df or not pd.api.types.is_numeric_dtype(df[metric]):
        numeric = [c for c in df if pd.api.types.is_numeric_dtype(df[c]) and c not in LE_COLUMNS]
        raise BenchmarkInputError(f"--curve-metric {metric!r} is not a metric of {LABEL_EFFICIENCY}; "
                                  f"choose one of {', '.join(numeric)}")


def table3_label_efficiency(df: pd.DataFrame, metric: str = "macro_f1") -> pd.DataFrame:
    _check_curve_metric(df, metric)
    return label_efficiency_summary(df, [metric] + [m for m in ("macro_f1", "accuracy", "auc_micro", "range_exact")
                                                    if m != metric and m in df])


def table3_markdown(table: pd.DataFrame) -> str:
    metrics = [c[:-len("_mean")] for c in table if c.endswith("_mean")]
    lines = _md_header(["network", "depth", "fraction", "patients", "repeats"] +
                       [f"{_heading(m)} (mean ± SD)" for m in metrics])
    for _, r in table.iterrows():
        depth = BASELINE_DEPTH if str(r.run).startswith("baseline_") else str(r.depth)
        lines.append(_md_row([r["name"], depth, f"{r.fraction:g}", f"{r.n_patients:g}", str(r.repeats)] +
                             [f"{_num(r[f'{m}_mean'], 3)} ± {_num(r[f'{m}_sd'], 3)}" for m in metrics]))
    return ("\n".join(lines) + "\n\nTest metrics on the same held-out patients for every fraction; the training "
            "patients of a fraction are a seeded, class-stratified subset of the training pool, nested inside the "
            "larger fractions of the same repeat. Mean ± SD over the finished repeats (SD — with one repeat).\n")


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
                label=f"{_le_label(t['name'].iat[0], t['depth'].iat[0])} (n = {t['repeats'].max()} repeats)")
        ax.scatter(points["fraction"], points[metric], color=colour, s=12, alpha=0.5, lw=0)
    ticks = done.groupby("fraction")["n_patients"].mean()
    ax.set_xscale("log")
    ax.set_xticks(ticks.index, [f"{f:.0%}\n{n:g} pts" for f, n in ticks.items()], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("training patients (fraction of the training pool)", fontsize=9)
    ax.set_ylabel(f"test {_heading(metric)}", fontsize=9)
    if metric not in LOWER_IS_BETTER:
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


def fig4_scatter(results: Results) -> Figure:
    """Predicted against true target of each finished run's test slices, coloured by slice class, with the identity
    line and the mean the baseline predicts; MAE, RMSE and R² beside the baseline MAE in each title."""
    runs = [r for r in _done_runs(results) if r.has_target]
    if not runs:
        raise FigureUnavailable("no finished run regresses a target")
    fig, axes = _grid(len(runs), 4, (3.2, 3.2))
    classes = results.classes
    for i, r in enumerate(runs):
        ax = axes.flat[i]
        truth, pred, train_mean = r.target_arrays()
        labels = r.predictions["label"].to_numpy()
        for k, c in enumerate(classes):
            colour, marker = CLASS_STYLE.get(c, EXTRA_STYLES[k % len(EXTRA_STYLES)])
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


# ---- figures that need the model and the images ---------------------------------------------------------------------
def load_model(run: Run):
    path = run.dir / "model" / "model.keras"
    if not path.is_file():
        raise FigureUnavailable(f"{run.name}: no trained model ({path} is missing; results copied without model "
                                f"weights cannot show features or saliency)")
    import keras
    return keras.models.load_model(path, compile=False)


def run_preprocessing(run: Run) -> Preprocessing:
    """The Preprocessing the run's model saw (model/model.json, else config.json)."""
    info = run.dir / "model" / "model.json"
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
    if not (path / "manifest.csv").is_file():
        raise FigureUnavailable(f"{run.name}: dataset {path} not found (the images are needed for t-SNE and "
                                f"Grad-CAM only; pass --data DIR to point at the dataset directory the run used)")
    ds = _load_dataset(str(path.resolve()))
    if recorded.get("manifest_sha256") and ds.manifest_sha256 != recorded["manifest_sha256"]:
        raise FigureUnavailable(f"{run.name}: {path / 'manifest.csv'} differs from the manifest the run used "
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
    import keras
    model = load_model(run)
    ds = run_dataset(run, data)
    preds = run.predictions
    x = model_inputs(run, dataset_rows(ds, preds), ds)
    probe = keras.Model(model.inputs, model.get_layer(POOLED).output)
    return probe.predict(x, batch_size=64, verbose=0), preds


def fig5_tsne(results: Results, runs: Sequence[str] | None = None, data: str | Path | None = None,
              seed: int = 0) -> Figure:
    """t-SNE (seeded, PCA start) of the pooled test features of each run (default: the best run), by true class."""
    from sklearn.manifold import TSNE
    chosen = [results.get(n) for n in runs] if runs else [results.best()]
    fig, axes = _grid(len(chosen), 3, (4.2, 4.0))
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
            colour, marker = CLASS_STYLE.get(c, EXTRA_STYLES[k % len(EXTRA_STYLES)])
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


def default_cam_run(results: Results) -> Run:
    """VGG16 (the paper's Grad-CAM network) at its better depth if it finished, else the best run."""
    vgg = [r for r in results.done if r.config["backbone"] == "vgg16"]
    return results.best(vgg) if vgg else results.best()


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
    from .gradcam import explain
    from .models import cam_layer_name
    if run.task != "classification":
        raise FigureUnavailable(f"{run.name} is a {run.task} model: Grad-CAM here reads a classifier's pre-softmax "
                                f"logits, which a multi-task model's shared output does not expose")
    counts = confusion(run)
    if run.metrics.get("confusion") is not None and counts.tolist() != run.metrics["confusion"]:
        raise BenchmarkInputError(f"{run.dir}: test_predictions.csv and test_metrics.json disagree on the "
                                  f"confusion matrix")
    model = load_model(run)
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
    note = (f"{run.title} (macro-F1 {run.metric('macro_f1'):.3f}). Rows: true class; columns: predicted class; "
            f"n: test images in the cell (the confusion matrix). Each cell: the image of median confidence, "
            f"Grad-CAM ({grid.methods[0]}) of layer {grid.layer} and SmoothGrad ({grid.methods[1]}), for the "
            f"predicted class.")
    if grid.max_output_diff > 0.05:
        note += (f"\nWARNING: this model's outputs differ from test_predictions.csv by up to "
                 f"{grid.max_output_diff:.2f}: the maps may not be those of the run's model.")
    fig.suptitle(note, fontsize=9, wrap=True)
    return fig


# ---- the whole report -----------------------------------------------------------------------------------------------
def write_report(results: Results, out: Path, *, lr: float | None = None, n_boot: int = 1000, seed: int = 0,
                 data: str | Path | None = None, tsne_runs: Sequence[str] | None = None,
                 gradcam_run: str | None = None, smooth_samples: int = 20, model_figures: bool = True,
                 jobs: int = 1, log: Callable[[str], None] = print) -> list[Path]:
    """Every table and figure into `out`; figures needing what is not on disk are skipped with a logged reason."""
    out = Path(out)
    check_writable(out)  # before the bootstrap's minutes, not at the first table written
    runs = _done_runs(results)
    unfinished = [f"{r.name} ({r.status})" for r in results.runs if not r.done]
    log(f"{results.root}: {len(runs)} finished run(s)" + (f"; not reported: {', '.join(unfinished)}"
                                                          if unfinished else ""))
    # named runs are checked before any work, so a typo fails at once
    cam_run = results.get(gradcam_run) if gradcam_run else None
    for name in tsne_runs or ():
        results.get(name)
    for r in runs:  # every result file read and checked now: a damaged one stops the report before Table 1
        _ = r.metrics, r.selection, r.timing, r.predictions
    written: list[Path] = []

    def text(name: str, content: str) -> None:
        written.append(atomic.write_text(out / name, content))

    t1 = table1_time(results)
    written.append(atomic.write_csv(out / "table1_time.csv", t1))
    text("table1_time.md", table1_markdown(t1))
    t2 = table2_test(results, n_boot=n_boot, seed=seed, jobs=jobs)
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

    figure("fig3_curves", lambda: fig3_curves(results, lr=lr))
    task = results.task
    if task != "classification":
        figure("fig4_scatter", lambda: fig4_scatter(results))
    if task == "regression":
        log("fig4_confusion, fig4_selection, fig5_tsne and fig6_gradcam left out: they show classes, and a "
            "regression has none (fig4_scatter shows its test predictions)")
    else:
        figure("fig4_confusion", lambda: fig4_confusion(results))
        figure("fig4_selection", lambda: fig4_selection(results))
        if model_figures:
            figure("fig5_tsne", lambda: fig5_tsne(results, runs=tsne_runs, data=data, seed=seed))
            cam_run = cam_run or default_cam_run(results)
            figure("fig6_gradcam", lambda: fig6_gradcam(cam_grid(cam_run, data=data, samples=smooth_samples,
                                                                 seed=seed)))
        else:
            log("fig5_tsne and fig6_gradcam skipped: --no-model-figures")
    for p in written:
        log(f"wrote {p}")
    return written


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


def main(argv: list[str] | None = None) -> int:
    import matplotlib
    matplotlib.use("Agg")
    args = build_parser().parse_args(argv)
    if args.n_boot < 0 or args.smooth_samples < 0 or args.jobs < 1:
        print("benchmark.report: error: --n-boot and --smooth-samples must be >= 0, --jobs >= 1", file=sys.stderr)
        return 2
    out = args.out or args.results / "report"
    try:
        curve = (args.results / LABEL_EFFICIENCY).is_file()
        if curve:
            write_label_efficiency_report(args.results, out, metric=args.curve_metric)
            if not any((p / "config.json").is_file() for p in args.results.iterdir()):
                return 0
        results = load_results(args.results)
        with warnings.catch_warnings():
            # t-SNE and Keras chatter would bury the report's own lines
            warnings.simplefilter("ignore", FutureWarning)
            write_report(results, out, lr=args.lr, n_boot=args.n_boot,
                         seed=args.seed, data=args.data,
                         tsne_runs=[s.strip() for s in args.tsne_run.split(",")] if args.tsne_run else None,
                         gradcam_run=args.gradcam_run, smooth_samples=args.smooth_samples,
                         model_figures=not args.no_model_figures, jobs=args.jobs)
    except BenchmarkInputError as exc:
        print(f"benchmark.report: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

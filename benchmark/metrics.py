"""Evaluation metrics: classification (with the paper's two AUC readings), stack-aware range metrics,
regression of a slice count, and patient-level bootstrap confidence intervals.

Metrics that are undefined on the data given are NaN, never a crash and never a silent 0: a class with neither
support nor predictions has F1 NaN, an AUC needing a class that y_true lacks is NaN, R^2 of a constant truth is NaN.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix, roc_auc_score

from benchmark.decode import IN, in_range, stack_groups, stack_table


# Every metric the engine writes (test_metrics.json, histories, summaries) and whether a higher value is better: the
# scores (F1, accuracies, AUCs, range hit rates, R²) go up, the errors and losses (*_mae, rmse, loss) go down.
HIGHER_IS_BETTER = {
    "macro_f1": True, "accuracy": True, "soft_accuracy": True, "auc_micro": True, "auc_weighted": True,
    "range_exact": True, "range_within1": True, "r2": True,
    "dice": True, "dice_cavity": True, "dice_myocardium": True,
    "boundary_mae": False, "mae": False, "rmse": False, "mae_mean_baseline": False, "loss": False,
}


def higher_is_better(metric: str) -> bool:
    """Direction of a metric named as in test_metrics.json or a history (val_ prefix allowed; f1_<class> is an
    F1); ValueError for a name this table does not know, so that no metric is ranked the wrong way by default."""
    name = metric.removeprefix("val_")
    if name.startswith("f1_"):
        return True
    if name not in HIGHER_IS_BETTER:
        raise ValueError(f"no direction known for metric {metric!r}; known: {', '.join(HIGHER_IS_BETTER)}")
    return HIGHER_IS_BETTER[name]


def _labels(values, n_classes: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise ValueError(f"{name}: expected a 1-D array of integer class indices, got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(f"{name}: class indices must lie in 0..{n_classes - 1}, got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64)


def per_class_f1(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """F1 per class, 2TP / (2TP + FP + FN): sklearn's f1_score(average=None, zero_division=NaN), in numpy because
    every training epoch's validation calls it (sklearn's input checks cost ~10 ms a call)."""
    tp = np.bincount(truth[truth == pred], minlength=n_classes).astype(np.float64)
    denom = np.bincount(truth, minlength=n_classes) + np.bincount(pred, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def macro_f1(f1: np.ndarray) -> float:
    """The mean over classes whose F1 is defined (NaN when none is)."""
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")


def classification_metrics(y_true, proba, classes: Sequence[str], *, y_pred=None, stacks=None) -> dict:
    """Per-class F1, macro F1, accuracy, AUCs, supports and confusion matrix of one evaluated set.

    y_true: (n,) class indices; proba: (n, C) probabilities, columns in `classes` order; y_pred: predictions
    (e.g. monotone-decoded labels), argmax of proba when omitted; stacks: (patient, frame, slice) per sample
    (see benchmark.decode.stack_table), adds `soft_accuracy`.

    F1 uses sklearn's zero_division=NaN: a class with no support and no prediction has no F1 (NaN, not 0), and
    macro_f1 averages the classes whose F1 is defined. A class with predictions but no support scores 0.
    auc_micro is sklearn's roc_auc_score(one_hot, proba, average="micro") - what the paper's code computed; it pools
    every (sample, class) pair, so it is defined even when a class is absent. auc_weighted is the support-weighted
    one-vs-rest AUC the paper's text describes; a class absent from y_true has no one-vs-rest AUC, so it is NaN
    then (sklearn versions disagree there: older ones raise, newer ones warn and drop the class).
    """
    classes = tuple(classes)
    n_classes = len(classes)
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"proba: expected shape (n, {n_classes}) for classes {classes}, got {p.shape}")
    truth = _labels(y_true, n_classes, "y_true")
    if len(truth) != len(p):
        raise ValueError(f"y_true has {len(truth)} samples, proba {len(p)}")
    if len(truth) == 0:
        raise ValueError("classification_metrics: no samples")
    pred = p.argmax(axis=1) if y_pred is None else _labels(y_pred, n_classes, "y_pred")
    if len(pred) != len(truth):
        raise ValueError(f"y_pred has {len(pred)} samples, y_true {len(truth)}")

    labels = list(range(n_classes))
    f1 = per_class_f1(truth, pred, n_classes)
    support = np.bincount(truth, minlength=n_classes)
    out: dict = {f"f1_{name.lower()}": float(v) for name, v in zip(classes, f1)}
    out["macro_f1"] = macro_f1(f1)
    out["accuracy"] = float(np.mean(pred == truth))
    if stacks is not None:
        out["soft_accuracy"] = soft_accuracy(truth, pred, stacks)
    out["auc_micro"] = float(roc_auc_score(np.eye(n_classes)[truth], p, average="micro"))
    if not (support > 0).all():
        out["auc_weighted"] = float("nan")
    elif n_classes == 2:  # sklearn's binary form scores the second class; the first's one-vs-rest AUC is the same
        out["auc_weighted"] = float(roc_auc_score(truth, p[:, 1]))
    else:
        out["auc_weighted"] = float(roc_auc_score(truth, p, multi_class="ovr", average="weighted", labels=labels))
    out.update({f"support_{name.lower()}": int(v) for name, v in zip(classes, support)})
    out["n"] = int(len(truth))
    out["confusion"] = confusion_matrix(truth, pred, labels=labels).tolist()
    return out


def soft_correct(y_true, y_pred, stacks) -> np.ndarray:
    """Per sample: the prediction equals the true label of the slice itself or of slice-1 or slice+1 of the
    same patient and frame. Neighbours are looked up among the samples given (a neighbour not in the evaluated
    set does not count), so a stack end has one neighbour and other stacks never lend a label."""
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if truth.shape != pred.shape or truth.ndim != 1:
        raise ValueError(f"y_true {truth.shape} and y_pred {pred.shape} must be equally long 1-D arrays")
    table = stack_table(stacks, len(truth))
    by_key = pd.Series(truth, index=pd.MultiIndex.from_frame(table))
    correct = pred == truth
    for step in (-1, 1):
        keys = pd.MultiIndex.from_arrays([table["patient"], table["frame"], table["slice"] + step])
        neighbour = by_key.reindex(keys).to_numpy()  # NaN where absent: compares unequal to any label
        correct |= pred == neighbour
    return correct


def soft_accuracy(y_true, y_pred, stacks) -> float:
    """Fraction of samples whose prediction matches the slice's own label or an adjacent slice's (`soft_correct`)."""
    correct = soft_correct(y_true, y_pred, stacks)
    if correct.size == 0:
        raise ValueError("soft_accuracy: no samples")
    return float(correct.mean())


def stack_ranges(y_true, y_pred, stacks, in_index: int = IN) -> pd.DataFrame:
    """One row per (patient, frame) stack: first and last IN slice (the `slice` value) of the truth and of the
    prediction, <NA> when the stack has no IN there."""
    truth = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if truth.shape != pred.shape or truth.ndim != 1:
        raise ValueError(f"y_true {truth.shape} and y_pred {pred.shape} must be equally long 1-D arrays")
    table = stack_table(stacks, len(truth))
    slices = table["slice"].to_numpy()
    records = []
    for rows in stack_groups(table):
        record = {"patient": table["patient"].iat[rows[0]], "frame": table["frame"].iat[rows[0]]}
        for prefix, labels in (("true", truth), ("pred", pred)):
            span = in_range(labels[rows], in_index)
            record[f"{prefix}_first"] = None if span is None else int(slices[rows[span[0]]])
            record[f"{prefix}_last"] = None if span is None else int(slices[rows[span[1]]])
        records.append(record)
    frame = pd.DataFrame(records, columns=["patient", "frame", "true_first", "true_last", "pred_first", "pred_last"])
    for col in ("true_first", "true_last", "pred_first", "pred_last"):
        frame[col] = frame[col].astype("Int64")
    return frame


def range_metrics(y_true, y_pred, stacks, in_index: int = IN) -> dict:
    """How well the predicted IN range of each stack matches the true one, in slices.

    Only stacks with a true IN slice are scored (`n_stacks`; the others are counted in `n_stacks_no_in_true`).
    A stack where nothing is predicted IN has no predicted boundary: it counts as wrong for range_exact and
    range_within1, and is left out of the boundary MAEs, which are therefore conditional on a range being
    predicted; `n_stacks_no_in_pred` says how many were left out. The apical boundary is the first IN slice
    (lowest slice index), the basal one the last; boundary_mae averages both boundaries of every scored stack.
    The predicted range spans the first to the last predicted IN, gaps included.
    """
    ranges = stack_ranges(y_true, y_pred, stacks, in_index)
    scored = ranges[ranges["true_first"].notna()]
    has_pred = scored["pred_first"].notna().to_numpy()
    err_apical = (scored["pred_first"] - scored["true_first"]).abs().to_numpy(dtype=float, na_value=np.nan)
    err_basal = (scored["pred_last"] - scored["true_last"]).abs().to_numpy(dtype=float, na_value=np.nan)
    n_stacks = len(scored)

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    return {
        "range_exact": mean(has_pred & (err_apical == 0) & (err_basal == 0)),
        "range_within1": mean(has_pred & (err_apical <= 1) & (err_basal <= 1)),
        "boundary_mae_apical": mean(err_apical[has_pred]),
        "boundary_mae_basal": mean(err_basal[has_pred]),
        "boundary_mae": mean(np.concatenate([err_apical[has_pred], err_basal[has_pred]])),
        "n_stacks": int(n_stacks),
        "n_stacks_no_in_pred": int(n_stacks - has_pred.sum()),
        "n_stacks_no_in_true": int(len(ranges) - n_stacks),
    }


def regression_metrics(y_true, y_pred, train_mean: float) -> dict:
    """MAE, RMSE and R^2 of a regression, with the MAE of always predicting the training mean for reference.

    R^2 = 1 - SS_res / SS_tot is NaN when the truth is constant (SS_tot = 0), where it is undefined; sklearn
    would report 0 or 1 there.
    """
    truth = np.asarray(y_true, dtype=np.float64)
    pred = np.asarray(y_pred, dtype=np.float64)
    if truth.shape != pred.shape or truth.ndim != 1 or truth.size == 0:
        raise ValueError(f"y_true {truth.shape} and y_pred {pred.shape} must be equally long non-empty 1-D arrays")
    residual = truth - pred
    ss_tot = float(np.sum((truth - truth.mean()) ** 2))
    return {
        "mae": float(np.mean(np.abs(residual))),
        "rmse": float(np.sqrt(np.mean(residual ** 2))),
        "r2": 1.0 - float(np.sum(residual ** 2)) / ss_tot if ss_tot > 0 else float("nan"),
        "mae_mean_baseline": float(np.mean(np.abs(truth - train_mean))),
        "n": int(truth.size),
    }


def bootstrap_ci(fn: Callable[[np.ndarray], float], groups, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile (1 - alpha) confidence interval of fn by resampling patients with replacement.

    groups: (n,) patient of each row. Each replicate draws as many patients as there are, with replacement, and
    calls fn with the row indices of all drawn patients (a patient drawn twice contributes its rows twice), so
    slices of one patient stay together. Replicates where fn is NaN (e.g. an AUC on a resample lacking a class)
    are dropped; all NaN gives (NaN, NaN). Deterministic for a given seed.
    Metrics that look at neighbouring slices (soft accuracy, ranges) cannot take duplicated rows: compute their
    per-row or per-stack values once on the full set (`soft_correct`, `stack_ranges`) and let fn average them.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"bootstrap_ci: alpha must lie in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"bootstrap_ci: n_boot must be at least 1, got {n_boot}")
    codes, uniques = pd.factorize(np.asarray(groups), use_na_sentinel=True)
    if (codes < 0).any():
        raise ValueError("bootstrap_ci: groups contain missing values")
    if len(uniques) == 0:
        raise ValueError("bootstrap_ci: no rows")
    order = np.argsort(codes, kind="stable")
    rows_of = np.split(order, np.cumsum(np.bincount(codes))[:-1])
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(0, len(rows_of), size=len(rows_of))
        values[b] = fn(np.concatenate([rows_of[g] for g in drawn]))
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


# the per-stack IN-range figures that average to range_metrics', and the ones a model is compared on with the constant
STACK_RANGE_KEYS = ("range_exact", "range_within1", "boundary_mae")
VS_CONSTANT = "vs_constant"  # test_metrics.json / oof_metrics.json: the paired difference against every slice IN
N_BOOT, BOOT_SEED = 1000, 0  # of the paired intervals the engine writes


def nan_mean(values: np.ndarray) -> float:
    """The mean of the finite values; NaN when there is none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def per_stack_range(y: np.ndarray, pred: np.ndarray, stacks: pd.DataFrame, in_index: int = IN) -> pd.DataFrame:
    """range_metrics of each (patient, frame) stack alone: their NaN-mean over stacks is range_metrics of all.
    `outer`: the stack's true labels hold a slice that is not IN.

    (A stack without a true IN slice gives NaN everywhere and drops out, as range_metrics leaves it out; a stack
    scored but without predicted IN has NaN boundary errors, which range_metrics also leaves out, and each scored
    stack weighs its two boundaries equally in both.)
    """
    y, pred = np.asarray(y), np.asarray(pred)
    table = stack_table(stacks, len(y))
    records = []
    for (patient, frame), rows in table.groupby(["patient", "frame"], sort=True).indices.items():
        m = range_metrics(y[rows], pred[rows], table.iloc[rows], in_index)
        records.append({"patient": patient, "frame": frame, **{k: m[k] for k in STACK_RANGE_KEYS},
                        "outer": bool((y[rows] != in_index).any())})
    return pd.DataFrame(records, columns=["patient", "frame", *STACK_RANGE_KEYS, "outer"])


def paired_difference(values, reference, groups, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                      alpha: float = 0.05) -> dict:
    """nan_mean(values) - nan_mean(reference) of two measurements of the same items (e.g. per-stack hits of a
    model and of a baseline), with its percentile (1 - alpha) interval from `bootstrap_ci` over `groups` (the
    patient of each item): each replicate takes both means on the same resampled items, so what the two share
    cancels. n_boot 0: the difference alone (interval NaN)."""
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_difference: values {a.shape} and reference {b.shape} must be equally long 1-D")

    def diff(idx: np.ndarray) -> float:
        return nan_mean(a[idx]) - nan_mean(b[idx])

    lo, hi = bootstrap_ci(diff, groups, n_boot, seed, alpha) if n_boot else (float("nan"), float("nan"))
    return {"difference": diff(np.arange(len(a))), "lo": lo, "hi": hi}


def paired_range_difference(y_true, y_pred, reference, stacks, n_boot: int = N_BOOT, seed: int = BOOT_SEED,
                            alpha: float = 0.05, in_index: int = IN) -> dict:
    """The IN-range figures of labels `y_pred` minus those of `reference` (e.g. every slice IN) on the same stacks,
    each with a paired patient-bootstrap interval (`paired_difference`; a patient's stacks are drawn together), and
    the supports: stacks scored (with a true IN slice), those of them with an outer slice, patients.

    {range_exact: {difference, lo, hi}, range_within1: ..., boundary_mae: ..., n_stacks, n_stacks_outer,
    n_patients, n_boot, seed, alpha}. Seeded: the same inputs give the same intervals.
    """
    model = per_stack_range(y_true, y_pred, stacks, in_index)
    base = per_stack_range(y_true, reference, stacks, in_index)
    scored = model["range_exact"].notna().to_numpy()
    model, base = model[scored].reset_index(drop=True), base[scored].reset_index(drop=True)
    if model.empty:
        raise ValueError("paired_range_difference: no stack with a true IN slice")
    groups = model["patient"].to_numpy()
    out: dict = {key: paired_difference(model[key].to_numpy(float), base[key].to_numpy(float), groups, n_boot, seed,
                                        alpha) for key in STACK_RANGE_KEYS}
    out.update(n_stacks=int(len(model)), n_stacks_outer=int(model["outer"].sum()),
               n_patients=int(pd.unique(groups).size), n_boot=int(n_boot), seed=int(seed), alpha=float(alpha))
    return out

"""The test of a final model: its outputs on the held-out slices (test_outputs), what they score (evaluate, a pure
function of outputs and labels), and the files that record both (write_test); and the same scores of the
out-of-fold predictions over the training pool (write_out_of_fold), where a slice-range run has many more stacks
than on its test set."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from data_prep import atomic
from .baselines import CONSTANT, baseline_metrics, scores
from .data import Dataset
from .decode import Decoding, decode_stacks, stack_groups, stack_table, tune_decoding
from .fits import FitInputs
from .infer import predict
from .layout import OOF_METRICS, OOF_PREDICTIONS, TARGET_PREDICTION, TEST_METRICS, TEST_PREDICTIONS
from .metrics import VS_CONSTANT, classification_metrics, paired_range_difference, range_metrics, regression_metrics
from .run_spec import RunSpec
from .task import Task

SOURCE_KEYS = ("macro_f1", "range_exact", "range_within1", "boundary_mae", "n_stacks")  # by_source, per test source
Baselines = dict[str, tuple[np.ndarray, np.ndarray, dict]]  # baselines.baseline_predictions


def test_outputs(spec: RunSpec, model: keras.Model, ds: Dataset, rows: np.ndarray, inputs: FitInputs | None,
                 lr: float) -> np.ndarray:
    """The outputs on `rows` of `ds` of the final model (fitted at `lr`). Where `ds` is the run's dataset they come
    through the run's fit `inputs` (the cached path's tensors, if it has them), checked against the whole model on a
    few images."""
    if inputs is None:
        output = predict(model, [ds.make_inputs(rows, spec.prep)])
    else:
        output = predict(inputs.trainable, inputs.source.plain(rows))
    if not np.isfinite(output).all():  # a final fit can blow up without its training loss reaching inf
        raise RuntimeError(f"{spec.name}: the final model's test outputs are not finite (the final fit at LR "
                           f"{lr:g} diverged)")
    if inputs is not None:
        check = rows[:8]
        direct = predict(model, [ds.make_inputs(check, spec.prep)])
        # a target's tolerance scales with its SD (pixel counts are not probabilities)
        diff = np.abs(direct - output[:len(check)]) / spec.task.output_scale()
        if not (diff <= 5e-2).all():
            raise RuntimeError(f"{spec.name}: the exported model disagrees with the cached path on test images "
                               f"(max diff {diff.max():.3g} in output units / SD)")
    return output


def evaluate(ds: Dataset, rows: np.ndarray, output: np.ndarray, task: Task, decoding: Decoding | None,
             baselines: Baselines | None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(test_predictions.csv, test_metrics.json) of a model's outputs (columns: the task's, models.head) on `rows`
    of `ds`. With a `decoding` (slice-range data) the IN ranges are scored too, beside the `baselines`' (class_test).
    """
    out = _rows_frame(ds, rows)
    metrics: dict[str, Any] = {}
    if task.has_classes:
        columns, metrics = class_test(ds, rows, output[:, :len(task.classes)], task.classes, decoding, baselines)
        out = out.assign(**columns)
    if task.has_target:
        out["target"] = truth = ds.rows["target"].to_numpy()[rows]
        out[TARGET_PREDICTION[task.kind]] = output[:, -1]
        # the baseline predicts the training pool's mean, the value the head's rescale is centred on
        metrics.update(regression_metrics(truth, output[:, -1], task.mean))
    return out, metrics


def class_test(ds: Dataset, rows: np.ndarray, proba: np.ndarray, classes: tuple[str, ...],
               decoding: Decoding | None, baselines: Baselines | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(test_predictions.csv columns, test_metrics.json) of class probabilities on test rows.

    The top level scores the argmax. With a decoding there is also `monotone` (the plain monotone decoding),
    `decoded` (the decoding chosen on validation: the run's headline range figures), `baselines` ("every slice
    IN" and the position-only model, scored on the same stacks) and `vs_constant`: the decoded IN-range figures
    minus every slice IN's, with paired patient-bootstrap intervals (metrics.paired_range_difference; each other
    baseline's in its own entry).
    """
    y = ds.rows.y.to_numpy()[rows]
    stacks = ds.stacks(rows) if ds.has_stacks else None
    pred = proba.argmax(1)
    columns: dict[str, Any] = {"prediction": [classes[i] for i in pred]}
    for c, name in enumerate(classes):
        columns[f"p_{name}"] = proba[:, c]
    metrics = classification_metrics(y, proba, classes, stacks=stacks)
    if decoding is None:
        return columns, metrics
    metrics.update(range_metrics(y, pred, stacks))
    decoded = decoding.apply(proba, stacks)
    for key, labels in (("monotone", decode_stacks(proba, stacks)), ("decoded", decoded)):
        columns[key] = [classes[i] for i in labels]
        m = classification_metrics(y, proba, classes, y_pred=labels, stacks=stacks)
        m.update(range_metrics(y, labels, stacks))
        metrics[key] = {k: v for k, v in m.items() if k != "confusion"}
    metrics["decoded"]["decoding"] = decoding.to_dict()
    for name, (_, labels, _) in baselines.items():
        columns[f"baseline_{name}"] = [classes[i] for i in labels]
    metrics["baselines"] = baseline_metrics(baselines, y, ds.rows.iloc[rows], classes)
    if CONSTANT in baselines:
        constant = baselines[CONSTANT][1]
        metrics[VS_CONSTANT] = paired_range_difference(y, decoded, constant, stacks)
        for name, (_, labels, _) in baselines.items():
            if name != CONSTANT:
                metrics["baselines"][name][VS_CONSTANT] = paired_range_difference(y, labels, constant, stacks)
    sources = ds.sources[rows]
    if len(set(sources)) > 1:  # each source's figures beside the baselines' on its own stacks
        labelled = {"decoded": decoded, **{f"baseline_{b}": labels for b, (_, labels, _) in baselines.items()}}
        metrics["by_source"] = {}
        for name in sorted(set(sources)):
            at = np.flatnonzero(sources == name)
            metrics["by_source"][name] = {
                key: scores(y[at], proba[at], labels[at], stacks.iloc[at].reset_index(drop=True), classes,
                            SOURCE_KEYS) for key, labels in labelled.items()}
    return columns, metrics


def _rows_frame(ds: Dataset, rows: np.ndarray) -> pd.DataFrame:
    """The first columns of a predictions file: which slice, and its true label."""
    return ds.rows.loc[rows, ["patient", "frame", "slice", "label"]].reset_index(drop=True)


def write_test(directory: Path, predictions: pd.DataFrame, metrics: dict[str, Any]) -> None:
    atomic.write_csv(directory / TEST_PREDICTIONS, predictions)
    atomic.write_json(directory / TEST_METRICS, metrics)


@dataclass(frozen=True)
class FoldDecodings:
    """One decoding per validation fold, each tuned on the other folds' out-of-fold outputs (cross_fitted_decoding):
    out-of-fold labels scored without any decoding that saw the stacks it labels. Applies like a Decoding."""

    decodings: tuple[Decoding, ...]
    fold: np.ndarray  # the fold of each row, in the order of the probabilities it is applied to

    def apply(self, proba, stacks) -> np.ndarray:
        p = np.asarray(proba, dtype=np.float64)
        table = stack_table(stacks, len(p))
        labels = np.empty(len(p), dtype=np.int64)
        for k, decoding in enumerate(self.decodings):
            at = np.flatnonzero(self.fold == k)
            labels[at] = decoding.apply(p[at], table.iloc[at])
        return labels

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "cross-fitted", "tuned_on": "the other folds' out-of-fold predictions",
                "folds": [d.to_dict() for d in self.decodings]}


def cross_fitted_decoding(proba: np.ndarray, y: np.ndarray, stacks: pd.DataFrame, fold: np.ndarray) -> FoldDecodings:
    """For each fold k, the decoding tuned (decode.tune_decoding) on the rows of every other fold. Folds are
    patient-grouped, so a stack lies in one fold; one fold alone is decoded plainly monotone (nothing to tune on)."""
    p, y, fold = np.asarray(proba, dtype=np.float64), np.asarray(y), np.asarray(fold)
    table = stack_table(stacks, len(p))
    n_folds = int(fold.max()) + 1
    for rows in stack_groups(table):
        if len(set(fold[rows])) > 1:
            first = table.iloc[rows[0]]
            raise ValueError(f"cross_fitted_decoding: stack {first.patient} {first.frame} spans several folds")
    decodings = []
    for k in range(n_folds):
        other = np.flatnonzero(fold != k)
        decodings.append(tune_decoding(p[other], y[other], table.iloc[other])[0] if other.size else Decoding())
    return FoldDecodings(tuple(decodings), fold)


def write_out_of_fold(directory: Path, ds: Dataset, rows: np.ndarray, proba: np.ndarray,
                      decoding: Decoding | FoldDecodings, baselines: Baselines) -> dict[str, Any]:
    """oof_predictions.csv and oof_metrics.json of a slice-range run, returning the metrics.

    rows: the training-pool rows of `ds`, each predicted by a model that did not train on it (a CV fold's model on
    its validation rows); proba: their class probabilities (rows x ds.classes, in the order of `rows`); decoding:
    how they become IN ranges (best a FoldDecodings from cross_fitted_decoding, so that no stack is labelled by a
    decoding tuned on it); baselines: {name: (probabilities, labels, record)} of the baselines on the same rows,
    every slice IN among them (protocol.Experiment.oof_baselines). The files have the columns and sections of
    test_predictions.csv and test_metrics.json (class_test), `vs_constant` included, and `by_source` where the
    pool has several sources.
    """
    columns, metrics = class_test(ds, rows, np.asarray(proba)[:, :len(ds.classes)], ds.classes, decoding, baselines)
    atomic.write_csv(directory / OOF_PREDICTIONS, _rows_frame(ds, rows).assign(**columns))
    atomic.write_json(directory / OOF_METRICS, metrics)
    return metrics

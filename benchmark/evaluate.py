"""The test of a final model: its outputs on the held-out slices (test_outputs), what they score (evaluate, a pure
function of outputs and labels), and the files that record both (write_test)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from data_prep import atomic
from .baselines import baseline_metrics, scores
from .data import Dataset
from .decode import Decoding, decode_stacks
from .fits import FitInputs
from .infer import predict
from .layout import TARGET_PREDICTION, TEST_METRICS, TEST_PREDICTIONS
from .metrics import classification_metrics, range_metrics, regression_metrics
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
    out = ds.rows.loc[rows, ["patient", "frame", "slice", "label"]].reset_index(drop=True)
    metrics: dict[str, Any] = {}
    if task.has_classes:
        columns, metrics = class_test(ds, rows, output[:, :len(task.classes)], task.classes, decoding, baselines)
        for name, values in columns.items():
            out[name] = values
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
    `decoded` (the decoding chosen on validation: the run's headline range figures) and `baselines` ("every slice
    IN" and the position-only model, scored on the same stacks).
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


def write_test(directory: Path, predictions: pd.DataFrame, metrics: dict[str, Any]) -> None:
    atomic.write_csv(directory / TEST_PREDICTIONS, predictions)
    atomic.write_json(directory / TEST_METRICS, metrics)

"""The baselines every slice-range result is read against: "every slice IN" and a position-only model.

Outer slices are rare in real stacks (ACDC: ~5 % of slices; most stacks have none), so labelling every slice IN
already gets most IN ranges exactly right. A model is only useful where it beats that constant on the same stacks.
The position-only model sees where a slice sits in its stack and nothing of the image: it shows how much of a
model's score the slice position alone explains. Both are scored by the same functions as every model.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from .decode import IN, Decoding, tune_decoding
from .metrics import classification_metrics, range_metrics

# slice position within its stack: relative (0 apex .. 1 base), first, last, and distance from either end in
# slices capped at NEAR_END (outer slices sit within a few slices of an end)
POSITION_FEATURES = ("relative", "first", "last", "from_apex", "from_base")
NEAR_END = 4
CONSTANT = "every_in"
POSITION = "position"
BASELINES = {CONSTANT: "every slice IN", POSITION: "position only"}
# what a baseline is scored on, in test_metrics.json "baselines"
BASELINE_KEYS = ("macro_f1", "accuracy", "range_exact", "range_within1", "boundary_mae", "n_stacks")


def position_features(rows: pd.DataFrame) -> np.ndarray:
    """(n, len(POSITION_FEATURES)) from a manifest's `slice` (0 = apex) and `n_slices` columns."""
    s = rows["slice"].to_numpy(dtype=np.float64)
    n = rows["n_slices"].to_numpy(dtype=np.float64)
    last = np.maximum(n - 1, 1)
    return np.stack([s / last, s == 0, s == n - 1, np.minimum(s, NEAR_END) / NEAR_END,
                     np.minimum(n - 1 - s, NEAR_END) / NEAR_END], axis=1).astype(np.float32)


def constant_proba(n: int, n_classes: int, index: int = IN) -> np.ndarray:
    p = np.zeros((n, n_classes))
    p[:, index] = 1.0
    return p


class PositionModel:
    """Multinomial logistic regression on POSITION_FEATURES, balanced over classes as the oversampling balances
    the networks' training; deterministic (lbfgs)."""

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def fit(self, rows: pd.DataFrame, y: np.ndarray) -> PositionModel:
        self.present = np.unique(y)
        self.model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)
        if len(self.present) > 1:
            self.model.fit(position_features(rows), y)
        return self

    def predict_proba(self, rows: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(rows), self.n_classes))
        if len(self.present) == 1:  # a training set of one class: that class everywhere
            out[:, self.present[0]] = 1.0
            return out
        out[:, self.model.classes_] = self.model.predict_proba(position_features(rows))
        return out


def scores(y: np.ndarray, proba: np.ndarray, pred: np.ndarray, stacks: pd.DataFrame, classes: Sequence[str],
           keys: Sequence[str] = BASELINE_KEYS) -> dict[str, Any]:
    """`keys` of the class and IN-range metrics of labels `pred` (with the probabilities they came from)."""
    m = classification_metrics(y, proba, classes, y_pred=pred)
    m.update(range_metrics(y, pred, stacks))
    return {k: m[k] for k in keys}


def position_out_of_fold(train: pd.DataFrame, y_train: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]],
                         n_classes: int) -> np.ndarray:
    """Probabilities of each row of `train` from the position model fitted on the other folds (`folds`: positions
    into `train`; a row no fold validates stays 0)."""
    oof = np.zeros((len(train), n_classes))
    for tr, va in folds:
        oof[va] = PositionModel(n_classes).fit(train.iloc[tr], y_train[tr]).predict_proba(train.iloc[va])
    return oof


def position_baseline(train: pd.DataFrame, y_train: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]],
                      test: pd.DataFrame, n_classes: int) -> tuple[np.ndarray, Decoding, dict]:
    """Test probabilities of the position model fitted on `train`, and its decoding tuned on out-of-fold
    predictions over `folds` (positions into `train`), the rule every model's decoding follows."""
    oof = position_out_of_fold(train, y_train, folds, n_classes)
    decoding, record = tune_decoding(oof, y_train, train[["patient", "frame", "slice"]])
    proba = PositionModel(n_classes).fit(train, y_train).predict_proba(test)
    return proba, decoding, record


def baseline_predictions(train: pd.DataFrame, y_train: np.ndarray, folds, test: pd.DataFrame,
                         n_classes: int) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    """{baseline: (test probabilities, test labels, how they were decoded)}."""
    stacks = test[["patient", "frame", "slice"]]
    proba, decoding, record = position_baseline(train, y_train, folds, test, n_classes)
    return {CONSTANT: constant_baseline(len(test), n_classes), POSITION: (proba, decoding.apply(proba, stacks), record)}


def constant_baseline(n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every slice IN as (probabilities, labels, record) for n rows: the same on any rows, test or out-of-fold."""
    constant = constant_proba(n, n_classes)
    return constant, constant.argmax(1), {"kind": "constant", "label_index": IN}


def baseline_metrics(predictions: dict[str, tuple[np.ndarray, np.ndarray, dict]], y: np.ndarray,
                     test: pd.DataFrame, classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    stacks = test[["patient", "frame", "slice"]].reset_index(drop=True)
    return {name: {**scores(y, proba, pred, stacks, classes), "decoding": record}
            for name, (proba, pred, record) in predictions.items()}

"""What a model learns: slice classes (the paper), a numeric manifest column (regression), or both at once.

A Task turns dataset rows into training targets, gives the loss and the validation scores of every epoch, and
names the metric that selects the learning rate and epoch count. Targets and model outputs share one layout,
one row per slice:

    classification  (C,)     one-hot class / class probabilities
    regression      (1,)     the target in its own units (the model's fixed rescale, models.head, makes it so)
    multi           (C + 1,) both, the target last

Losses. Regression is MSE on the target standardised with the training pool's mean and SD: ((out - y) / sd)²,
which is the MSE of the standardised output against the standardised target. The multi-task loss is the plain
sum CE + that MSE: at the start of training both are about 1 (CE of a near-uniform 3-class softmax is ln 3, the
standardised MSE of an output near the mean is the target's variance, 1), so equal weights let neither task drown
the other; the weighting is not tuned.

Selection. Regression selects by the lowest fold-mean validation MAE. The multi-task head selects by the profile's
classification metric (macro-F1): the class head is what the benchmark compares across networks, and the target
is an auxiliary task (as in CACTUS); its validation MAE is in the history beside.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .metrics import macro_f1, per_class_f1, regression_metrics
from .registry import TASKS

CLASS_SCORES = ("val_loss", "val_accuracy", "val_macro_f1")
TARGET_SCORES = ("val_mae", "val_rmse", "val_r2", "val_mae_mean_baseline")


@dataclass(frozen=True)
class Task:
    kind: str                       # classification | regression | multi
    classes: tuple[str, ...]
    target: str | None = None       # the manifest column (regression, multi)
    mean: float = 0.0               # training pool's target mean and SD (the head's fixed rescale)
    sd: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"unknown task {self.kind!r}; valid: {', '.join(TASKS)}")
        if (self.target is None) != (self.kind == "classification"):
            raise ValueError(f"task {self.kind} {'needs' if self.target is None else 'takes no'} target column")

    @property
    def has_classes(self) -> bool:
        return self.kind != "regression"

    @property
    def has_target(self) -> bool:
        return self.kind != "classification"

    @property
    def n_outputs(self) -> int:
        return len(self.classes) * self.has_classes + self.has_target

    @property
    def oversampled(self) -> bool:
        """Oversampling the outer classes balances classes; a regression has none to balance."""
        return self.has_classes

    def head_kwargs(self) -> dict:
        return {"task": self.kind, "target_scale": (self.mean, self.sd)}

    def describe(self) -> dict:
        """What config.json and model.json record about the task."""
        out: dict = {"task": self.kind, "target": self.target}
        if self.has_target:
            out["target_standardisation"] = {"mean": self.mean, "sd": self.sd}
        return out

    def targets(self, rows: pd.DataFrame) -> np.ndarray:
        """(n, n_outputs) float32 training targets of Dataset rows (columns `y` and, with a target, `target`)."""
        parts = []
        if self.has_classes:
            parts.append(np.eye(len(self.classes), dtype=np.float32)[rows["y"].to_numpy()])
        if self.has_target:
            parts.append(rows["target"].to_numpy(dtype=np.float32)[:, None])
        return np.concatenate(parts, axis=1)

    def output_scale(self) -> np.ndarray:
        """Per output column the unit of a 'small' difference: 1 for probabilities, the SD for the target."""
        return np.array([1.0] * (len(self.classes) * self.has_classes) + [self.sd] * self.has_target)

    # ---- training ---------------------------------------------------------------------------------------------------
    def loss(self, y, out):
        """The training loss (keras ops; see the module docstring)."""
        from keras import losses, ops
        total = 0.0
        if self.has_classes:
            c = len(self.classes)
            total = losses.CategoricalCrossentropy()(y[:, :c], out[:, :c])
        if self.has_target:
            total = total + ops.mean(ops.square((out[:, -1] - y[:, -1]) / self.sd))
        return total

    # ---- validation -------------------------------------------------------------------------------------------------
    @property
    def score_names(self) -> tuple[str, ...]:
        return (CLASS_SCORES if self.has_classes else ("val_loss",)) + (TARGET_SCORES if self.has_target else ())

    def scores(self, y: np.ndarray, out: np.ndarray, train_mean: float | None) -> dict[str, float]:
        """Validation scores of one epoch. y, out: (n, n_outputs); train_mean: the fit's training target mean, for
        the baseline MAE (None for a classification)."""
        rec: dict[str, float] = {}
        loss = 0.0
        if self.has_classes:
            c = len(self.classes)
            truth, pred = y[:, :c].argmax(1), out[:, :c].argmax(1)
            p = np.clip(out[np.arange(len(truth)), truth], 1e-7, 1.0)
            loss = float(-np.mean(np.log(p)))
            rec.update(val_accuracy=float(np.mean(pred == truth)),
                       val_macro_f1=macro_f1(per_class_f1(truth, pred, c)))
        if self.has_target:
            m = regression_metrics(y[:, -1], out[:, -1], train_mean)
            loss += float(np.mean(((out[:, -1].astype(np.float64) - y[:, -1]) / self.sd) ** 2))
            rec.update(val_mae=m["mae"], val_rmse=m["rmse"], val_r2=m["r2"],
                       val_mae_mean_baseline=m["mae_mean_baseline"])
        return {"val_loss": loss, **rec}

    def selection_metric(self, profile_metric: str) -> str:
        return "mae" if self.kind == "regression" else profile_metric


def make_task(kind: str, classes: tuple[str, ...], target: str | None, pool_targets: np.ndarray | None) -> Task:
    """The Task of a run, its standardisation from the training pool's targets (data.target_values checked them)."""
    from .errors import BenchmarkInputError
    if kind == "classification":
        return Task(kind, classes)
    values = np.asarray(pool_targets, dtype=np.float64)
    sd = float(values.std())
    if not sd > 0:
        raise BenchmarkInputError(f"target column {target!r} is constant ({values[0]:g}) over the {len(values)} "
                                  f"training-pool slices: there is nothing to regress")
    return Task(kind, classes, target, float(values.mean()), sd)

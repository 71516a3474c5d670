"""One fit: SGD-Nesterov over training slots for a number of epochs, validated after every epoch.

The same loop trains a head on cached features, a last block on cached prefix tensors, or a whole network on images
(the per-epoch path): only `fetch` differs. Each epoch's slot order and view draws come from (seed, epoch) alone, so a
fit of E epochs reproduces the first E epochs of a longer fit with the same seed exactly (used to rebuild the
depth-0 fold models that depth-1 folds start from, instead of storing every epoch's weights).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .data import Slots
from .metrics import classification_metrics

Fetch = Callable[[np.ndarray, np.ndarray, np.ndarray], "np.ndarray | list[np.ndarray]"]


@dataclass(frozen=True)
class FitSettings:
    lr: float
    epochs: int
    batch_size: int
    momentum: float
    decay_rate: float
    seed: int
    draws: int | None  # views per slot to draw from (cached bank); None: a fresh draw per epoch


class EpochBatches(keras.utils.PyDataset):
    """The batches of all epochs as one sequence: item i is batch i % n of epoch i // n.

    One `model.fit` call runs every epoch (its set-up cost dominates when a head trains on cached features). The
    slot order and view draws of epoch e come from (seed, e) alone, so nothing depends on when Keras calls its
    epoch hooks or how far its input pipeline reads ahead.
    """

    def __init__(self, fetch: Fetch, slots: Slots, y: np.ndarray, settings: FitSettings):
        super().__init__()
        self.fetch, self.slots, self.y, self.s = fetch, slots, y, settings
        self.per_epoch = math.ceil(len(slots) / settings.batch_size)

    @functools.lru_cache(maxsize=2)
    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.s.seed, epoch])
        order = rng.permutation(len(self.slots))
        draws = rng.integers(0, self.s.draws, len(self.slots)) if self.s.draws else np.full(len(self.slots), epoch)
        return order, draws

    def __len__(self) -> int:
        return self.per_epoch * self.s.epochs

    def __getitem__(self, i: int):
        epoch, b = divmod(i, self.per_epoch)
        order, draws = self.plan(epoch)
        ids = order[b * self.s.batch_size:(b + 1) * self.s.batch_size]
        x = self.fetch(self.slots.rows[ids], self.slots.copies[ids], draws[ids])
        return (tuple(x) if isinstance(x, list) else x), self.y[self.slots.rows[ids]]


class EpochEnd(keras.callbacks.Callback):
    """Validation after every epoch, NaN detection, and the progress bar."""

    def __init__(self, val_x, val_y, classes, bar):
        super().__init__()
        self.val_x, self.val_y, self.classes, self.bar = val_x, val_y, classes, bar
        self.records: list[dict] = []
        self.diverged = False

    def on_epoch_end(self, epoch, logs=None):
        loss = float(logs["loss"])
        rec = {"epoch": epoch + 1, "loss": loss}
        proba = None
        if math.isfinite(loss) and self.val_x is not None:
            proba = predict(self.model, self.val_x)
        if not math.isfinite(loss) or (proba is not None and not np.all(np.isfinite(proba))):
            self.diverged = True
            self.model.stop_training = True
            rec.update(val_loss=np.nan, val_accuracy=np.nan, val_macro_f1=np.nan)
        elif proba is not None:
            m = classification_metrics(self.val_y, proba, self.classes)
            p = np.clip(proba[np.arange(len(self.val_y)), self.val_y], 1e-7, 1.0)
            rec.update(val_loss=float(-np.mean(np.log(p))), val_accuracy=m["accuracy"], val_macro_f1=m["macro_f1"])
            self.bar.set_postfix(loss=f"{loss:.3f}", val_f1=f"{m['macro_f1']:.3f}")
        self.records.append(rec)
        self.bar.update(1)


def predict(model: keras.Model, x, batch_size: int = 64) -> np.ndarray:
    """Direct calls in chunks: cheaper than model.predict for the small heads, bounded memory for big nets."""
    xs = x if isinstance(x, (list, tuple)) else [x]
    n = len(xs[0])
    parts = [np.asarray(model([a[i:i + batch_size] for a in xs] if len(xs) > 1 else xs[0][i:i + batch_size],
                              training=False)) for i in range(0, n, batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output.shape[-1]), np.float32)


def compile_for(model: keras.Model, s: FitSettings, loss: str = "categorical_crossentropy") -> None:
    schedule = keras.optimizers.schedules.InverseTimeDecay(s.lr, decay_steps=1, decay_rate=s.decay_rate)
    model.compile(optimizer=keras.optimizers.SGD(schedule, momentum=s.momentum, nesterov=True), loss=loss)


def fit(model: keras.Model, fetch: Fetch, slots: Slots, y_onehot: np.ndarray, s: FitSettings, *,
        val_x=None, val_y: np.ndarray | None = None, classes: tuple[str, ...] = (),
        desc: str = "fit") -> tuple[pd.DataFrame, bool]:
    """Train `model` in place. Returns (history per epoch, diverged).

    y_onehot is indexed by row (the whole dataset); val_y holds class indices of the validation rows. A NaN or
    infinite training loss stops the fit and marks it diverged (its history is kept, selection skips it).
    """
    compile_for(model, s)
    with tqdm(total=s.epochs, desc=desc, unit="epoch", leave=False, disable=None) as bar:
        end = EpochEnd(val_x, val_y, classes, bar)
        batches = EpochBatches(fetch, slots, y_onehot, s)
        model.fit(batches, epochs=s.epochs, steps_per_epoch=batches.per_epoch, verbose=0, shuffle=False,
                  callbacks=[end])
    return pd.DataFrame.from_records(end.records), end.diverged

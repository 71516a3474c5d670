"""One fit: SGD-Nesterov over training slots for a number of epochs, validated after every epoch.

The same loop trains a head on cached features, a last block on cached prefix tensors, or a whole network on images
(the per-epoch path): only `fetch` differs. Each epoch's slot order and view draws come from (seed, epoch) alone, so a
fit of E epochs reproduces the first E epochs of a longer fit with the same seed exactly (used to rebuild the
depth-0 fold models that depth-1 folds start from, instead of storing every epoch's weights).
"""
from __future__ import annotations

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
    """The batches of one epoch, in a seeded order; x comes from `fetch` (cached tensors or fresh images)."""

    def __init__(self, fetch: Fetch, slots: Slots, y: np.ndarray, settings: FitSettings, epoch: int):
        super().__init__()
        rng = np.random.default_rng([settings.seed, epoch])
        self.order = rng.permutation(len(slots))
        draws = (rng.integers(0, settings.draws, len(slots)) if settings.draws
                 else np.full(len(slots), epoch))
        self.fetch, self.slots, self.y, self.draws, self.bs = fetch, slots, y, draws, settings.batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.bs)

    def __getitem__(self, i: int):
        ids = self.order[i * self.bs:(i + 1) * self.bs]
        x = self.fetch(self.slots.rows[ids], self.slots.copies[ids], self.draws[ids])
        return (tuple(x) if isinstance(x, list) else x), self.y[self.slots.rows[ids]]


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
    records = []
    diverged = False
    bar = tqdm(range(s.epochs), desc=desc, unit="epoch", leave=False, disable=None)
    for epoch in bar:
        h = model.fit(EpochBatches(fetch, slots, y_onehot, s, epoch), epochs=1, verbose=0, shuffle=False)
        loss = float(h.history["loss"][0])
        rec = {"epoch": epoch + 1, "loss": loss}
        if not math.isfinite(loss):
            diverged = True
            records.append({**rec, "val_loss": np.nan, "val_accuracy": np.nan, "val_macro_f1": np.nan})
            break
        if val_x is not None:
            proba = model.predict(val_x, batch_size=256, verbose=0)
            if not np.all(np.isfinite(proba)):
                diverged = True
                records.append({**rec, "val_loss": np.nan, "val_accuracy": np.nan, "val_macro_f1": np.nan})
                break
            m = classification_metrics(val_y, proba, classes)
            p = np.clip(proba[np.arange(len(val_y)), val_y], 1e-7, 1.0)
            rec.update(val_loss=float(-np.mean(np.log(p))), val_accuracy=m["accuracy"], val_macro_f1=m["macro_f1"])
            bar.set_postfix(loss=f"{loss:.3f}", val_f1=f"{m['macro_f1']:.3f}")
        records.append(rec)
    return pd.DataFrame.from_records(records), diverged

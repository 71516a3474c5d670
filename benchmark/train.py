"""One fit: SGD-Nesterov over training slots for a number of epochs, validated after every epoch.

The same Trainer trains a head on cached features, a last block on cached prefix tensors, or a whole network on
images (the per-epoch path): only the `Inputs` differ. Each epoch's slot order and view draws come from
(seed, epoch) alone, so a fit of E epochs reproduces the first E epochs of a longer fit with the same seed exactly
(used to rebuild the depth-0 fold models that depth-1 folds start from, instead of storing every epoch's weights).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Protocol

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from tqdm.auto import tqdm

from .data import Slots, prefetched
from .infer import PREDICT_BATCH, predict
from .task import Task


@dataclass(frozen=True)
class FitSettings:
    """What varies between the fits of one model (the optimiser's fixed settings live in the Trainer)."""

    lr: float
    epochs: int
    seed: int
    draws: int | None  # views per slot to draw from (cached bank); None: a fresh draw per epoch


class Inputs(Protocol):
    """Where a fit's inputs come from: cached tensors held in memory (`in_memory`; then also `tensors`,
    `positions(rows, copies, draws)`, `plain_positions(rows)` and `y_tensor(targets)` for compiled epochs and
    validation), or images made batch by batch."""

    in_memory: bool

    def batch(self, rows: np.ndarray, copies: np.ndarray, draws: np.ndarray) -> list[np.ndarray]: ...

    def plain(self, rows: np.ndarray) -> list[np.ndarray]: ...


def epoch_plan(s: FitSettings, n_slots: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Slot order and view draws of one epoch: a function of (seed, epoch) only."""
    rng = np.random.default_rng([s.seed, epoch])
    order = rng.permutation(n_slots)
    draws = rng.integers(0, s.draws, n_slots) if s.draws else np.full(n_slots, epoch)
    return order, draws


class InverseTimeDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr / (1 + decay_rate * step), Keras' InverseTimeDecay(lr, decay_steps=1, decay_rate) with lr a variable, so
    one compiled training step serves every learning rate of a run."""

    def __init__(self, decay_rate: float):
        self.lr = keras.Variable(0.0, trainable=False, name="initial_learning_rate")
        self.decay_rate = decay_rate

    def __call__(self, step):
        return self.lr / (1.0 + self.decay_rate * keras.ops.cast(step, "float32"))

    def get_config(self):
        return {"decay_rate": self.decay_rate}


class Trainer:
    """SGD-Nesterov with InverseTimeDecay on the task's loss, one compiled step shared by both paths.

    The per-epoch path calls `step` once per batch from Python. The cached path runs a whole epoch in one compiled
    call that gathers each batch from the in-memory cache and calls the same step, so both paths apply identical
    updates (and draw identical dropout masks) for identical batches. One Trainer serves every fit of a model:
    `reset` zeroes the optimizer, sets the learning rate and re-seeds dropout, so compiling (XLA included) happens
    once per model and a fit's result depends only on its own settings, never on the fits before it.
    """

    def __init__(self, model: keras.Model, *, batch_size: int, momentum: float, decay_rate: float, task: Task,
                 jit_compile: bool = False):
        self.model, self.batch_size = model, batch_size
        self.schedule = InverseTimeDecay(decay_rate)
        self.opt = keras.optimizers.SGD(self.schedule, momentum=momentum, nesterov=True)
        self.opt.build(model.trainable_variables)
        self.loss = task.loss
        self.seed_generators = [g for layer in model.layers for g in [getattr(layer, "seed_generator", None)] if g]
        self.step = tf.function(self._step, reduce_retracing=True, jit_compile=jit_compile)
        self._compiled_for = None

    def reset(self, s: FitSettings) -> None:
        for v in self.opt.variables:
            v.assign(np.zeros(v.shape, dtype=v.dtype))
        self.schedule.lr.assign(s.lr)
        for i, g in enumerate(self.seed_generators):
            g.state.assign(np.array([s.seed, i], dtype=g.state.dtype))
        self.s = s

    def _step(self, xs, y):
        with tf.GradientTape() as tape:
            out = self.model(xs if len(xs) > 1 else xs[0], training=True)
            loss = self.loss(y, out) + sum(self.model.losses)
        variables = self.model.trainable_variables
        self.opt.apply(tape.gradient(loss, variables), variables)
        return loss

    def _epoch_fn(self, arrays, y_all, positions, targets):
        n = tf.shape(positions)[0]
        bs = self.batch_size
        total = tf.constant(0.0)
        for b in tf.range((n + bs - 1) // bs):
            pos = positions[b * bs:(b + 1) * bs]
            loss = self.step([tf.gather(a, pos) for a in arrays], tf.gather(y_all, targets[b * bs:(b + 1) * bs]))
            total += loss * tf.cast(tf.shape(pos)[0], tf.float32)
        return total / tf.cast(n, tf.float32)

    def _predict_fn(self, arrays, positions):
        n = tf.shape(positions)[0]
        bs = PREDICT_BATCH
        parts = tf.TensorArray(tf.float32, size=(n + bs - 1) // bs, infer_shape=False)
        for b in tf.range((n + bs - 1) // bs):
            xs = [tf.gather(a, positions[b * bs:(b + 1) * bs]) for a in arrays]
            parts = parts.write(b, tf.cast(self.model(xs if len(xs) > 1 else xs[0], training=False), tf.float32))
        return parts.concat()

    def _compiled(self, inputs):
        """(epoch, predict) functions over in-memory inputs, traced once: fold sizes differ, so the index vectors
        are declared of any length (a relaxed retrace per run costs ~0.15 s)."""
        if self._compiled_for is not inputs:
            arrays = [tf.TensorSpec(t.shape, t.dtype) for t in inputs.tensors]
            index = tf.TensorSpec([None], tf.int64)
            self._epoch = tf.function(self._epoch_fn, input_signature=[
                arrays, tf.TensorSpec([None, None], tf.float32), index, index])
            self._predict = tf.function(self._predict_fn, input_signature=[arrays, index])
            self._compiled_for = inputs
        return self._epoch, self._predict

    def evaluator(self, inputs, rows: np.ndarray):
        """A function returning the model's outputs on the plain views of `rows`, called once per epoch: one
        compiled call over the in-memory cache, or chunked calls on images made once."""
        if inputs.in_memory and len(rows):
            pos = tf.constant(inputs.plain_positions(rows), tf.int64)
            predict_fn = self._compiled(inputs)[1]
            return lambda: predict_fn(inputs.tensors, pos).numpy()
        xs = inputs.plain(rows)
        return lambda: predict(self.model, xs)

    def run_epoch(self, inputs, slots: Slots, targets: np.ndarray, epoch: int) -> float:
        order, draws = epoch_plan(self.s, len(slots), epoch)
        rows, copies, draws = slots.rows[order], slots.copies[order], draws[order]
        if inputs.in_memory:
            epoch_fn = self._compiled(inputs)[0]
            positions = tf.constant(inputs.positions(rows, copies, draws), tf.int64)
            return float(epoch_fn(inputs.tensors, inputs.y_tensor(targets), positions, tf.constant(rows, tf.int64)))
        total = 0.0
        for sl, xs in prefetched(len(rows), self.batch_size, lambda sl: inputs.batch(rows[sl], copies[sl], draws[sl])):
            total += float(self.step([tf.constant(x) for x in xs], tf.constant(targets[rows[sl]]))) * len(rows[sl])
        return total / len(rows)


def fit(trainer: Trainer, inputs: Inputs, slots: Slots, targets: np.ndarray, s: FitSettings, task: Task, *,
        val_rows: np.ndarray | None = None, desc: str = "fit",
        outputs: list | None = None) -> tuple[pd.DataFrame, bool]:
    """Train the trainer's model in place. Returns (history per epoch, diverged); `outputs`, when given, receives
    each epoch's validation outputs.

    targets is indexed by row (the whole dataset, Task.targets). A NaN or infinite training loss or validation
    output stops the fit and marks it diverged (its history is kept, selection skips it).
    """
    trainer.reset(s)
    evaluate = trainer.evaluator(inputs, val_rows) if val_rows is not None else None
    # the baseline a regression's validation MAE is read against: predicting this fit's training mean
    train_mean = float(targets[np.unique(slots.rows), -1].mean()) if task.has_target else None
    records: list[dict] = []
    diverged = False
    for epoch in tqdm(range(s.epochs), desc=desc, unit="epoch", leave=False,
                      disable=bool(os.environ.get("TQDM_DISABLE")) or None):
        loss = trainer.run_epoch(inputs, slots, targets, epoch)
        rec = {"epoch": epoch + 1, "loss": loss}
        out = evaluate() if evaluate is not None and math.isfinite(loss) else None
        if not math.isfinite(loss) or (out is not None and not np.all(np.isfinite(out))):
            diverged = True
            records.append({**rec, **dict.fromkeys(task.score_names, np.nan)})
            break
        if out is not None:
            rec.update(task.scores(targets[val_rows], out, train_mean))
            if outputs is not None:
                outputs.append(out)
        records.append(rec)
    return pd.DataFrame.from_records(records), diverged

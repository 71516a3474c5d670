"""The stack-context model: labels every slice of a stack at once from the whole stack's slice features.

A per-slice classifier sees one image. Where a stack ends and whether its end slice is still IN is clearer from
the neighbours (the LV cavity shrinks towards the apex, the outflow and atria appear above the base) and from where
the slice sits. This model reads, for each slice of a stack ordered apex -> base, the frozen backbone's pooled
feature vector (the vectors the cached depth-0 path already computed, augmented views included) and the slice's
position (baselines.POSITION_FEATURES), and labels every slice:

    features (L, F), standardised -> dropout -> Dense(h, ReLU) -> [ + position (L, P) ] -> Conv1D(h, 3) x 2
    -> softmax per slice

Each feature is standardised with the mean and SD of the fit's training slices (the exported model holds the final
fit's as a Normalization layer). Two convolutions across slices see two neighbours on either side. Padding of shorter stacks in a batch is masked
to zero after every layer, so a stack's labels do not depend on the stacks batched with it.

The protocol is the per-slice one: the experiment's patient-grouped folds, a learning-rate grid (profile
`stack_lrs`, Adam), the (LR, epoch count) with the best fold-mean validation macro-F1, then a final fit on the
whole training pool, tested on the held-out patients. Outer classes are weighted by the oversampling factors the
per-slice fits use. The decoding of probabilities into a range (per-class offsets, monotone or argmax) is tuned on
the folds' out-of-fold validation predictions (decode.tune_decoding) and applied unchanged to the test; those
predictions are also the run's out-of-fold results (protocol.out_of_fold).
The run is one job on top of its backbone's depth-0 run (its features, and its final model for `predict`), written
to OUT/<backbone>_d0+stack/ like any run. Training costs seconds per fold on a CPU.
"""
from __future__ import annotations

import json
import shutil
import time
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from data_prep import atomic
from data_prep.provenance import code_version

from .baselines import POSITION_FEATURES, position_features
from .cache import split_model
from .decode import Decoding, stack_groups
from .evaluate import evaluate, write_test
from .fits import FitInputs
from .infer import predict
from .layout import (CV_HISTORY, DONE, MODEL_FILE, MODEL_JSON, RESULTS_FORMAT, SELECTION, STACK_SUFFIX, TIMING,
                     model_dir, stack_run_name)
from .protocol import ModelRun, decoding_on_folds, out_of_fold, select
from .run_spec import RunSpec, check_run_dir, job_seed, prepare_run_dir
from .task import Task

STACK_MODEL_FILE = "stack.keras"
N_POSITION = len(POSITION_FEATURES)


def build_stack_model(n_features: int, n_classes: int, *, hidden: int, dropout: float, seed: int) -> keras.Model:
    """(features (B, L, F), positions (B, L, P), mask (B, L, 1)) -> class probabilities (B, L, C)."""
    layers = keras.layers
    feats = keras.Input((None, n_features), name="features")
    pos = keras.Input((None, N_POSITION), name="positions")
    mask = keras.Input((None, 1), name="mask")
    init = keras.initializers.GlorotUniform
    x = layers.Dropout(dropout, seed=seed)(feats)
    x = layers.Dense(hidden, activation="relu", kernel_initializer=init(seed), name="slice_dense")(x)
    x = layers.Concatenate()([x, pos]) * mask
    for i in range(2):
        x = layers.Conv1D(hidden, 3, padding="same", activation="relu", kernel_initializer=init(seed + 1 + i),
                          name=f"across_slices_{i}")(x) * mask
        x = layers.Dropout(dropout, seed=seed + 10 + i)(x)
    out = layers.Dense(n_classes, activation="softmax", kernel_initializer=init(seed + 3), name="stack_output")(x)
    return keras.Model([feats, pos, mask], out, name="stack_context")


def with_scaling(model: keras.Model, mean: np.ndarray, sd: np.ndarray) -> keras.Model:
    """The stack model reading raw features: standardisation by the training slices' mean and SD in front."""
    feats, pos, mask = (keras.Input(t.shape[1:], name=t.name.split(":")[0]) for t in model.inputs)
    scaled = keras.layers.Normalization(mean=mean, variance=sd ** 2, name="feature_scale")(feats)
    return keras.Model([feats, pos, mask], model([scaled, pos, mask]), name="stack_context_model")


def feature_scale(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD per feature (SD floored, so a constant feature stays 0 after scaling)."""
    return features.mean(axis=0), np.maximum(features.std(axis=0), 1e-6)


def padded(groups: list[np.ndarray], positions: np.ndarray, features: np.ndarray, pos_feats: np.ndarray,
           y: np.ndarray | None, n_classes: int) -> list[np.ndarray]:
    """[features, positions, mask] (and one-hot targets when y is given) of the stacks `groups` (row indices
    into `positions`, `pos_feats` and `y`), zero-padded to the longest. positions: each row's feature vector."""
    length = max(len(g) for g in groups)
    x = np.zeros((len(groups), length, features.shape[1]), np.float32)
    p = np.zeros((len(groups), length, N_POSITION), np.float32)
    m = np.zeros((len(groups), length, 1), np.float32)
    t = np.zeros((len(groups), length, n_classes), np.float32)
    for i, g in enumerate(groups):
        x[i, :len(g)] = features[positions[g]]
        p[i, :len(g)] = pos_feats[g]
        m[i, :len(g)] = 1.0
        if y is not None:
            t[i, np.arange(len(g)), y[g]] = 1.0
    return [x, p, m] + ([t] if y is not None else [])


def unpad(out: np.ndarray, groups: list[np.ndarray], n_rows: int) -> np.ndarray:
    """(B, L, C) stack outputs back to one row per slice, in the row order the groups index."""
    flat = np.zeros((n_rows, out.shape[-1]))
    for i, g in enumerate(groups):
        flat[g] = out[i, :len(g)]
    return flat


class StackTrainer:
    """Adam on the masked, class-weighted cross-entropy; one compiled step for every fit of the run (reset sets
    the learning rate, zeroes the optimiser and re-seeds dropout, so a fit depends on its own settings only)."""

    def __init__(self, model: keras.Model, class_weight: np.ndarray):
        self.model = model
        self.opt = keras.optimizers.Adam(learning_rate=1e-3)
        self.opt.build(model.trainable_variables)
        self.class_weight = tf.constant(class_weight, tf.float32)
        self.seed_generators = [g for layer in model.layers for g in [getattr(layer, "seed_generator", None)] if g]
        n_f, n_c = model.inputs[0].shape[-1], model.outputs[0].shape[-1]
        spec = [tf.TensorSpec([None, None, n_f]), tf.TensorSpec([None, None, N_POSITION]),
                tf.TensorSpec([None, None, 1]), tf.TensorSpec([None, None, n_c])]
        self.step = tf.function(self._step, input_signature=spec)
        self.infer = tf.function(lambda x, p, m: model([x, p, m], training=False), input_signature=spec[:3])

    def reset(self, lr: float, seed: int) -> None:
        for v in self.opt.variables:
            v.assign(np.zeros(v.shape, dtype=v.dtype))
        self.opt.learning_rate = lr
        for i, g in enumerate(self.seed_generators):
            g.state.assign(np.array([seed, i], dtype=g.state.dtype))

    def _step(self, x, p, m, t):
        with tf.GradientTape() as tape:
            out = self.model([x, p, m], training=True)
            ce = -tf.reduce_sum(t * tf.math.log(tf.clip_by_value(out, 1e-7, 1.0)), axis=-1)
            w = tf.reduce_sum(t * self.class_weight, axis=-1) * m[..., 0]
            loss = tf.reduce_sum(ce * w) / tf.maximum(tf.reduce_sum(w), 1.0)
        variables = self.model.trainable_variables
        self.opt.apply(tape.gradient(loss, variables), variables)
        return loss


class StackRun:
    """The stack-context model over one backbone's depth-0 run (`base`); see the module doc. `run` gets that run's
    ModelRun, whose cached features it trains on."""

    def __init__(self, base: RunSpec):
        self.base, self.exp = base, base.exp
        self.name = stack_run_name(base.name)
        self.dir = self.exp.out / self.name
        self.classes = base.classes
        self.task = Task("classification", self.classes)  # the stack model labels slices, whatever the base's task
        p = self.profile = base.profile
        self.lrs = tuple(p.stack_lrs)
        self.timing: dict[str, float] = {}

    # ---- provenance: the base run's config with the stack model's own settings ---------------------------------
    def config(self) -> dict[str, Any]:
        cfg = self.base.config()
        p = self.profile
        cfg.update(run=self.name, depth=f"{self.base.depth}{STACK_SUFFIX}", learning_rates=list(self.lrs),
                   stack_model={"features": "pooled backbone features of the depth-0 run (frozen)",
                                "position_features": list(POSITION_FEATURES), "hidden": p.stack_hidden,
                                "dropout": p.stack_dropout, "epochs": p.stack_epochs,
                                "stacks_per_batch": p.stack_batch, "optimizer": "Adam",
                                "base_run": self.base.name})
        return cfg

    def check_dir(self, force: bool) -> bool:
        return check_run_dir(self.dir, self.config(), force)

    def prepare(self, force: bool) -> bool:
        return prepare_run_dir(self.dir, self.config(), self.exp, force)

    # ---- data ---------------------------------------------------------------------------------------------------
    def _features(self, inputs: FitInputs) -> tuple[np.ndarray, Any, int | None]:
        """(the cache's feature matrix, its CachedInputs, bank draws per slot or None without augmentation) of the
        base run's fit inputs."""
        return inputs.source.arrays[0], inputs.source, (inputs.draws if self.exp.augment else None)

    def _groups(self, rows: np.ndarray) -> list[np.ndarray]:
        """Row indices (into ds.rows) of each stack among `rows`, apex -> base."""
        return [rows[g] for g in stack_groups(self.exp.ds.stacks(rows))]

    # ---- one fit ------------------------------------------------------------------------------------------------
    def _fit(self, trainer: StackTrainer, base_inputs: FitInputs, train_rows: np.ndarray, lr: float, epochs: int,
             seed: int, val_rows: np.ndarray | None = None) -> tuple[pd.DataFrame, list[np.ndarray], keras.Model]:
        """Train in place; (history with a `diverged` column, validation outputs per epoch (rows in val_rows
        order), the trained model reading raw features)."""
        ds, p = self.exp.ds, self.profile
        feats, inputs, draws = self._features(base_inputs)
        y = ds.rows.y.to_numpy()
        pos = position_features(ds.rows)
        n_c = len(self.classes)
        factors = self.exp.factors
        groups = self._groups(train_rows)
        plain = inputs.plain_positions(np.arange(len(y)))  # each row's un-augmented view
        mean, sd = feature_scale(feats[plain[train_rows]])
        feats = (feats - mean) / sd
        trainer.model.set_weights(self._initial(seed, feats.shape[1]))
        trainer.reset(lr, seed)
        if val_rows is not None:
            val_groups = self._groups(val_rows)
            vx = [tf.constant(a) for a in padded(val_groups, plain, feats, pos, None, n_c)]
            order = {r: i for i, r in enumerate(val_rows)}
            val_index = [np.array([order[r] for r in g]) for g in val_groups]
            val_targets = self.task.targets(ds.rows.iloc[val_rows])
        records, outputs, diverged = [], [], False
        for epoch in range(epochs):
            rng = np.random.default_rng([seed, epoch])
            perm = rng.permutation(len(groups))
            if draws:  # one augmented view per slice and epoch, from its bank (copies x draws, or the plain view)
                copies = np.floor(rng.random(len(y)) * (factors[y] + 1)).astype(np.int64) - 1
                d = np.where(copies < 0, 0, rng.integers(0, draws, len(y)))
                view_of = np.zeros(len(y), np.int64)
                view_of[train_rows] = inputs.index(train_rows, copies[train_rows], d[train_rows])
            else:
                view_of = plain
            total, count = 0.0, 0
            for b in range(0, len(perm), p.stack_batch):
                batch = [groups[i] for i in perm[b:b + p.stack_batch]]
                arrays = padded(batch, view_of, feats, pos, y, n_c)
                total += float(trainer.step(*[tf.constant(a) for a in arrays])) * len(batch)
                count += len(batch)
            rec = {"epoch": epoch + 1, "loss": total / count}
            if not np.isfinite(rec["loss"]):
                diverged = True
                records.append({**rec, **dict.fromkeys(self.task.score_names, np.nan)})
                break
            if val_rows is not None:
                out = trainer.infer(*vx).numpy()
                proba = np.zeros((len(val_rows), n_c))
                for i, idx in enumerate(val_index):
                    proba[idx] = out[i, :len(idx)]
                rec.update(self.task.scores(val_targets, proba, None))  # the per-slice runs' validation scores
                outputs.append(proba)
            records.append(rec)
        history = pd.DataFrame.from_records(records)
        history["diverged"] = diverged
        return history, outputs, with_scaling(trainer.model, mean, sd)

    def _initial(self, seed: int, n_features: int) -> list[np.ndarray]:
        """Initial weights of one fit: a freshly built model of that seed (every LR of a fold starts alike)."""
        keras.utils.set_random_seed(seed)
        return self._build(seed, n_features).get_weights()

    def _build(self, seed: int, n_features: int) -> keras.Model:
        p = self.profile
        return build_stack_model(n_features, len(self.classes), hidden=p.stack_hidden, dropout=p.stack_dropout,
                                 seed=seed)

    # ---- the protocol ---------------------------------------------------------------------------------------------
    def run(self, base: ModelRun) -> dict[str, Any]:
        """CV over (LR, fold) -> selection and decoding -> final fit -> test on the features of `base` (the
        depth-0 run's ModelRun); writes the run's files and DONE."""
        exp, p = self.exp, self.profile
        t0 = time.perf_counter()
        inputs = base.fit_inputs()
        n_features = self._features(inputs)[0].shape[1]
        model = self._build(job_seed(exp.seed, self.name, "build"), n_features)
        trainer = StackTrainer(model, exp.factors.astype(np.float32))
        parts, oof = [], {}
        for lr in self.lrs:
            for k, (tr, va) in enumerate(exp.folds):
                hist, outs, _ = self._fit(trainer, inputs, tr, lr, p.stack_epochs,
                                          job_seed(exp.seed, self.name, f"fold{k}"), va)
                hist.insert(0, "fold", k)
                hist.insert(0, "lr", lr)
                parts.append(hist)
                oof[(lr, k)] = outs
        history = pd.concat(parts, ignore_index=True)
        atomic.write_csv(self.dir / CV_HISTORY, history)
        self.timing["cv_s"] = time.perf_counter() - t0
        sel = select(history, "macro_f1", self.lrs, len(exp.folds))
        fold_outputs = [oof[(sel["lr"], k)][sel["epochs"] - 1] for k in range(len(exp.folds))]
        decoding, record = decoding_on_folds(exp, fold_outputs)
        sel["decoding"] = record
        atomic.write_json(self.dir / SELECTION, sel)
        t0 = time.perf_counter()
        history, _, final = self._fit(trainer, inputs, exp.pool, sel["lr"], sel["epochs"],
                                      job_seed(exp.seed, self.name, "final"))
        if history["diverged"].any():
            raise RuntimeError(f"{self.name}: the final fit diverged at LR {sel['lr']:g}")
        self.timing["final_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = self._test(final, decoding, base)
        out_of_fold(exp, fold_outputs, self.dir)
        self.timing["test_s"] = time.perf_counter() - t0
        self._export(final, sel)
        total = sum(self.timing.values())  # one job in one process: its wall time is its machine time
        atomic.write_json(self.dir / TIMING, {**self.timing, "feature_pass_s": 0.0, "foldinit_s": 0.0,
                                              "total_s": total, "wall_s": total})
        atomic.write_text(self.dir / DONE, "")
        return metrics

    def _test(self, model: keras.Model, decoding: Decoding, base: ModelRun) -> dict[str, Any]:
        exp = self.exp
        feats, inputs, _ = self._features(base.fit_inputs())
        if exp.test_ds is None:
            ds, rows = exp.ds, exp.test
            features, view_of = feats, inputs.plain_positions(rows)
        else:  # another dataset: its slices through the frozen backbone, as the cache made the training features
            ds, rows = exp.test_ds, np.arange(len(exp.test_ds.rows))
            net = base.network()
            prefix, _ = split_model(net.model, net.start)
            features = predict(prefix, [ds.make_inputs(rows, self.base.prep)])
            view_of = np.arange(len(rows))
        proba = predict_stacks(model, ds, rows, features, view_of, len(self.classes))
        predictions, metrics = evaluate(ds, rows, proba, self.task, decoding, exp.baselines)
        write_test(self.dir, predictions, metrics)
        return metrics

    def _export(self, model: keras.Model, sel: dict[str, Any]) -> None:
        """model/: the depth-0 run's model (the backbone that makes the features, Grad-CAM for `predict`), the stack
        model, and model.json saying how they combine."""
        directory = model_dir(self.dir)
        base_model = model_dir(self.base.dir)
        directory.mkdir(parents=True, exist_ok=True)
        atomic.atomic_write(directory / MODEL_FILE, lambda path: shutil.copyfile(base_model / MODEL_FILE, path))
        atomic.atomic_write(directory / STACK_MODEL_FILE, model.save)
        meta = json.loads((base_model / MODEL_JSON).read_text())
        meta.update(results_format=RESULTS_FORMAT, depth=f"{self.base.depth}{STACK_SUFFIX}",
                    code_version=code_version(),
                    decoding={k: sel["decoding"][k] for k in ("kind", "offsets")},
                    stack={"file": STACK_MODEL_FILE, "position_features": list(POSITION_FEATURES)})
        atomic.write_json(directory / MODEL_JSON, meta)


def predict_stacks(model: keras.Model, ds, rows: np.ndarray, features: np.ndarray, view_of: np.ndarray,
                   n_classes: int) -> np.ndarray:
    """Stack-model probabilities of `rows` of a Dataset (in that order); view_of[i]: the feature row of rows[i]
    (indexing `features`), each stack run alone (no padding)."""
    pos = position_features(ds.rows.iloc[rows])
    out = np.zeros((len(rows), n_classes))
    for g in stack_groups(ds.stacks(rows)):
        x, p, m = padded([g], view_of, features, pos, None, n_classes)
        out[g] = np.asarray(model([x, p, m], training=False))[0]
    return out

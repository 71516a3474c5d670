"""The segmentation head: LV cavity and myocardium from the experts' masks, and each stack's IN range read from them.

A slice is IN where the experts contoured an LV cavity, so the masks say directly what the per-slice classifiers
learn from three labels. This run trains, on the same patient-grouped folds as every run:

    backbone -> U-Net-style decoder (models.build_segmenter; skips per registry) -> softmax over SEG_CLASSES

with Dice + cross-entropy (a source whose masks label only the cavity, like DSB's overlays, is scored on the cavity
alone: binary cross-entropy and Dice on that channel), Adam over the profile's `segment_lrs`, at depth 0 (the
decoder on the frozen backbone) or 1 (the last block too), each training slot drawn with the oversampling factors
of the classification runs (OAP and OBS slices, the stack ends, repeated) and rotated / contrast-augmented the same
way. The (LR, epoch count) with the best fold-mean validation Dice (cavity and myocardium averaged) is selected.

The IN range: every training-pool slice's mask as predicted by the fold model that did not see it (out of fold, at
the selected LR and epochs) gives seg_features.STACK_FEATURES (areas in mm², ring completeness, area relative to the
stack's largest and its neighbours', position); a multinomial logistic regression on them (RangeModel) labels the
slice OAP / IN / OBS. Its own out-of-fold probabilities (fold k's stacks labelled by the model fitted on the other
folds' features) tune the decoding (decode.tune_decoding), so nothing on the test set chooses anything. The final
segmenter, fitted on the whole pool, segments the test slices; the RangeModel fitted on all out-of-fold features
labels them, and test_predictions.csv / test_metrics.json have the columns of every run (so every metric, baseline and
report reads them), plus `segmentation`: cavity and myocardium Dice per position third. The range model's
out-of-fold probabilities are also the run's out-of-fold results over the training pool (protocol.out_of_fold).

Each fit is a job folder (jobs/cv_lr<lr>_f<k>, jobs/final) with its history and a DONE marker, so an interrupted run
resumes at the first fit not done; the run is one `segment` job in the job graph, written to OUT/<run>+seg/.
"""
from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.linear_model import LogisticRegression

from data_prep import atomic
from data_prep.provenance import code_version

from .data import MASK_MYOCARDIUM, Slots, prefetched
from .decode import Decoding, tune_decoding
from .errors import BenchmarkInputError
from .evaluate import evaluate, write_test
from .infer import PREDICT_BATCH
from .layout import (CV_HISTORY, DONE, HISTORY, JOB_JSON, MODEL_FILE, MODEL_JSON, RESULTS_FORMAT, SEGMENT_SUFFIX, SELECTION,
                     TIMING, JobClock, job_dir, job_dir_name, job_seconds, model_dir, segment_run_name)
from .log import get as get_log
from .models import SEG_PREFIX, build_segmenter, set_segment_depth
from .preprocess import make_label_map
from .protocol import out_of_fold, select
from .registry import SEG_CLASSES
from .run_spec import RunSpec, check_run_dir, job_seed, prepare_run_dir
from .seg_features import (CAVITY, MYOCARDIUM, STACK_FEATURES, channels_of, describe, dice, dice_by_position,
                           stack_features)
from .task import Task

LOG = get_log("segment")
RANGE_MODEL_FILE = "range_model.json"
ENCODER_WEIGHTS = "encoder.weights.h5"
VAL_FEATURES = "val_features.npy"   # a CV fit's validation SLICE_FEATURES per epoch, from which the range model learns
FIT_WEIGHTS = "segmenter.weights.h5"  # the final fit's weights, for a resumed run's test and export
SELECTION_METRIC = "dice"


# ---- the loss ----------------------------------------------------------------------------------------------------
def segmentation_loss(proba, target, full, eps: float = 1.0):
    """Mean over the batch of cross-entropy + (1 - Dice), per sample: `full` 1 where the mask labels cavity and
    myocardium (3-class cross-entropy, Dice of both), 0 where it labels the cavity only (binary cross-entropy and
    Dice of the cavity channel: its unlabelled myocardium is not read as background). Dice is smoothed by `eps` so
    an empty truth asks for an empty prediction."""
    p = tf.clip_by_value(proba, 1e-7, 1.0)
    t = tf.one_hot(tf.cast(target, tf.int32), len(SEG_CLASSES))
    axes = (1, 2)
    ce3 = -tf.reduce_mean(tf.reduce_sum(t * tf.math.log(p), -1), axes)
    pc, tc = p[..., CAVITY], t[..., CAVITY]
    bce = -tf.reduce_mean(tc * tf.math.log(pc) + (1 - tc) * tf.math.log(tf.clip_by_value(1 - pc, 1e-7, 1.0)), axes)

    def soft_dice(k):
        inter = tf.reduce_sum(p[..., k] * t[..., k], axes)
        return 1.0 - (2.0 * inter + eps) / (tf.reduce_sum(p[..., k], axes) + tf.reduce_sum(t[..., k], axes) + eps)

    per_sample = full * (ce3 + soft_dice(MYOCARDIUM)) + (1 - full) * bce + soft_dice(CAVITY)
    return tf.reduce_mean(per_sample)


class SegTrainer:
    """Adam on segmentation_loss; one compiled step for every fit of the run (reset sets the learning rate, zeroes
    the optimiser and restores the initial weights, so a fit depends on its own settings only)."""

    def __init__(self, model: keras.Model):
        self.model = model
        self.initial = [v.numpy() for v in model.variables]
        self.opt = keras.optimizers.Adam(learning_rate=1e-3)
        self.opt.build(model.trainable_variables)
        size = model.inputs[0].shape[1]
        self.step = tf.function(self._step, input_signature=[
            tf.TensorSpec([None, size, size, 3]), tf.TensorSpec([None, size, size], tf.uint8),
            tf.TensorSpec([None])])
        self.infer = tf.function(lambda x: model(x, training=False),
                                 input_signature=[tf.TensorSpec([None, size, size, 3])])

    def reset(self, lr: float) -> None:
        for v, value in zip(self.model.variables, self.initial):
            v.assign(value)
        for v in self.opt.variables:
            v.assign(np.zeros(v.shape, dtype=v.dtype))
        self.opt.learning_rate = lr

    def _step(self, x, target, full):
        with tf.GradientTape() as tape:
            loss = segmentation_loss(self.model(x, training=True), target, full)
        variables = self.model.trainable_variables
        self.opt.apply(tape.gradient(loss, variables), variables)
        return loss

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.infer(tf.constant(x[i:i + PREDICT_BATCH])).numpy()
                               for i in range(0, len(x), PREDICT_BATCH)])


# ---- the range model -----------------------------------------------------------------------------------------------
class RangeModel:
    """OAP / IN / OBS of a slice from its STACK_FEATURES: standardised, multinomial logistic regression with classes
    weighted by the inverse of their frequency (outer slices are rare). A class absent from training gets
    probability 0."""

    def __init__(self, n_classes: int, seed: int):
        self.n_classes, self.seed = n_classes, seed

    def fit(self, x: np.ndarray, y: np.ndarray) -> "RangeModel":
        self.mean, self.sd = x.mean(0), np.maximum(x.std(0), 1e-6)
        self.classes_ = np.unique(y)
        if len(self.classes_) == 1:
            self.coef, self.intercept = np.zeros((1, x.shape[1])), np.zeros(1)
            return self
        lr = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000, random_state=self.seed)
        lr.fit((x - self.mean) / self.sd, y)
        self.coef, self.intercept = lr.coef_, lr.intercept_
        if len(self.classes_) == 2:  # sklearn's binary form: one row for the second class
            self.coef = np.vstack([-self.coef, self.coef]) / 2
            self.intercept = np.array([-self.intercept[0], self.intercept[0]]) / 2
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.sd) @ self.coef.T + self.intercept
        z = np.exp(z - z.max(1, keepdims=True))
        out = np.zeros((len(x), self.n_classes))
        out[:, self.classes_] = z / z.sum(1, keepdims=True)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(STACK_FEATURES), "classes": [int(c) for c in self.classes_],
                "mean": self.mean.tolist(), "sd": self.sd.tolist(), "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(), "n_classes": self.n_classes}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RangeModel":
        if d.get("features") != list(STACK_FEATURES):
            raise BenchmarkInputError(f"range model features {d.get('features')} differ from {list(STACK_FEATURES)}")
        m = cls(d["n_classes"], 0)
        m.classes_ = np.array(d["classes"])
        m.mean, m.sd, m.coef, m.intercept = (np.array(d[k]) for k in ("mean", "sd", "coef", "intercept"))
        return m


# ---- the run -------------------------------------------------------------------------------------------------------
class SegmentRun:
    """The segmentation head of one backbone at one depth (see the module doc); `spec` is the per-slice run's."""

    def __init__(self, spec: RunSpec):
        self.base, self.exp = spec, spec.exp
        self.name = segment_run_name(spec.name)
        self.dir = self.exp.out / self.name
        self.classes = spec.classes
        self.task = Task("classification", self.classes)
        p = self.profile = spec.profile
        self.lrs = tuple(p.segment_lrs)
        self.prep = spec.prep
        ds = self.exp.ds
        self.has_mask = (ds.rows["mask"] != "").to_numpy()
        self.full = ds.rows[MASK_MYOCARDIUM].to_numpy(np.float32)
        self._trainer: SegTrainer | None = None

    def config(self) -> dict[str, Any]:
        cfg = self.base.config()
        p = self.profile
        cfg.update(run=self.name, depth=f"{self.base.depth}{SEGMENT_SUFFIX}", learning_rates=list(self.lrs),
                   segment_model={"decoder": "U-Net-style, bilinear resize + Conv3x3-BN-ReLU per skip",
                                  "skip_layers": "registry skip_layers, else the last layer per resolution octave",
                                  "filters": p.segment_filters, "epochs": p.segment_epochs,
                                  "batch": p.segment_batch, "optimizer": "Adam", "loss": "cross-entropy + Dice",
                                  "classes": list(SEG_CLASSES), "selection_metric": SELECTION_METRIC,
                                  "range_model": "multinomial logistic regression on seg_features.STACK_FEATURES",
                                  "range_features": list(STACK_FEATURES)})
        return cfg

    def check_dir(self, force: bool) -> bool:
        return check_run_dir(self.dir, self.config(), force)

    def prepare(self, force: bool) -> bool:
        return prepare_run_dir(self.dir, self.config(), self.exp, force)

    def trainer(self) -> SegTrainer:
        if self._trainer is None:
            keras.utils.set_random_seed(self.seed("build"))
            model = build_segmenter(self.base.backbone, self.prep.input_size, weights=self.base.weights_path,
                                    filters=self.profile.segment_filters, seed=self.seed("decoder"))
            set_segment_depth(model, self.base.backbone, self.base.depth)
            self._trainer = SegTrainer(model)
        return self._trainer

    def seed(self, *parts: Any) -> int:
        return job_seed(self.exp.seed, self.name, *parts)

    # ---- inputs ---------------------------------------------------------------------------------------------------
    def _batch(self, rows: np.ndarray, copies: np.ndarray, draw: int, seed: int):
        ds = self.exp.ds
        angles, gammas = self.exp.augmentation.of(seed, rows, copies, np.full(len(rows), draw))
        x = ds.make_inputs(rows, self.prep, angles, gammas)
        t = np.stack([make_label_map(channels_of(ds.mask(int(r))), self.prep, a) for r, a in zip(rows, angles)])
        return x, t, self.full[rows]

    def segment(self, ds, rows: np.ndarray) -> np.ndarray:
        """(len(rows), H, W, len(SEG_CLASSES)) probabilities of the plain views of `rows` of `ds`."""
        x = ds.make_inputs(rows, self.prep)
        return self.trainer().predict(x)

    def dices(self, ds, rows: np.ndarray, proba: np.ndarray) -> dict[str, np.ndarray]:
        """Per-slice Dice of cavity and myocardium (NaN without a mask, or where neither holds the structure; the
        myocardium NaN too where the mask does not label it), at the network's input size."""
        out = {"cavity": np.full(len(rows), np.nan), "myocardium": np.full(len(rows), np.nan)}
        labelled_myo = ds.rows[MASK_MYOCARDIUM].to_numpy()[rows]
        for i, r in enumerate(rows):
            mask = ds.mask(int(r))
            if mask is None:
                continue
            truth, pred = make_label_map(channels_of(mask), self.prep), proba[i].argmax(-1)
            out["cavity"][i] = dice(pred == CAVITY, truth == CAVITY)
            if labelled_myo[i]:
                out["myocardium"][i] = dice(pred == MYOCARDIUM, truth == MYOCARDIUM)
        return out

    # ---- one fit --------------------------------------------------------------------------------------------------
    def _fit(self, job: str, train_rows: np.ndarray, lr: float, epochs: int, seed: int,
             val_rows: np.ndarray | None = None, keep: bool = False) -> pd.DataFrame:
        """Train from the initial weights; writes jobs/<job>/history.csv (and the validation features per epoch;
        with `keep` the trained weights, which a resumed run loads instead of training again) and DONE, unless an
        earlier process did. Returns the history; the trainer's model holds the fit's weights where `keep`."""
        d = job_dir(self.dir, job)
        trainer = self.trainer()
        if (d / DONE).is_file():
            if keep:
                trainer.model.load_weights(d / FIT_WEIGHTS)
            return pd.read_csv(d / HISTORY)
        clock = JobClock()
        d.mkdir(parents=True, exist_ok=True)
        trainer.reset(lr)
        ds, p = self.exp.ds, self.profile
        train_rows = train_rows[self.has_mask[train_rows]]
        slots = Slots.build(ds, train_rows, self.exp.factors)
        records, feats, diverged = [], [], False
        for epoch in range(epochs):
            order = np.random.default_rng([seed, epoch]).permutation(len(slots))
            rows, copies = slots.rows[order], slots.copies[order]
            total, count = 0.0, 0
            for sl, (x, t, full) in prefetched(len(order), p.segment_batch,
                                               lambda sl: self._batch(rows[sl], copies[sl], epoch, seed)):
                total += float(trainer.step(tf.constant(x), tf.constant(t), tf.constant(full))) * len(x)
                count += len(x)
            rec: dict[str, Any] = {"epoch": epoch + 1, "loss": total / max(count, 1)}
            if not np.isfinite(rec["loss"]):
                diverged = True
                records.append(rec)
                break
            if val_rows is not None:
                proba = self.segment(ds, val_rows)
                dices = self.dices(ds, val_rows, proba)
                rec.update({f"val_{SELECTION_METRIC}_{k}": float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
                            for k, v in dices.items()})
                both = [rec[f"val_{SELECTION_METRIC}_{k}"] for k in dices]
                rec[f"val_{SELECTION_METRIC}"] = float(np.nanmean(both)) if np.isfinite(both).any() else 0.0
                feats.append(describe(ds, val_rows, proba, self.prep))
            records.append(rec)
            LOG.info(f"{self.name} {job} epoch {epoch + 1}/{epochs}: loss {rec['loss']:.4f}"
                     + (f", val Dice {rec[f'val_{SELECTION_METRIC}']:.3f}" if val_rows is not None else ""))
        history = pd.DataFrame.from_records(records)
        history["diverged"] = diverged
        if feats:
            kept = np.stack(feats).astype(np.float32)
            atomic.atomic_write(d / VAL_FEATURES, lambda path: np.save(path, kept))
        if keep:
            atomic.atomic_write(d / FIT_WEIGHTS, trainer.model.save_weights)
        atomic.write_csv(d / HISTORY, history)
        atomic.write_json(d / JOB_JSON, clock.record(diverged=diverged, slots=len(slots)))
        atomic.write_text(d / DONE, "")
        return pd.read_csv(d / HISTORY)

    # ---- the protocol ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        exp, p = self.exp, self.profile
        if not self.has_mask[exp.pool].any():
            raise BenchmarkInputError(f"{self.name}: no training slice has a mask; the segmentation head needs a "
                                      f"dataset with masks (--head classify trains without them)")
        parts = []
        for lr in self.lrs:
            for k, (tr, va) in enumerate(exp.folds):
                hist = self._fit(job_dir_name("cv", lr, k), tr, lr, p.segment_epochs, self.seed(f"fold{k}"), va)
                hist.insert(0, "fold", k)
                hist.insert(0, "lr", lr)
                parts.append(hist)
        history = pd.concat(parts, ignore_index=True)
        atomic.write_csv(self.dir / CV_HISTORY, history)
        sel = select(history, SELECTION_METRIC, self.lrs, len(exp.folds))
        range_model, decoding, record = self._range_model(sel)
        sel["decoding"] = record
        atomic.write_json(self.dir / SELECTION, sel)
        final = self._fit("final", exp.pool, sel["lr"], sel["epochs"], self.seed("final"), keep=True)
        if final["diverged"].any():
            raise RuntimeError(f"{self.name}: the final fit diverged at LR {sel['lr']:g}")
        clock = JobClock()
        metrics = self._test(range_model, decoding)
        self._export(range_model, sel)
        test_dir = job_dir(self.dir, "test")
        test_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_json(test_dir / JOB_JSON, clock.record())
        atomic.write_json(self.dir / TIMING, job_seconds(self.dir))
        atomic.write_text(self.dir / DONE, "")
        return metrics

    def _oof_features(self, sel: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """(pool rows in fold order, their STACK_FEATURES from the fold models at the selected LR and epochs, the
        positions of each fold's rows in that order)."""
        exp = self.exp
        rows, feats, where, at = [], [], [], 0
        for k, (_, va) in enumerate(exp.folds):
            saved = np.load(job_dir(self.dir, job_dir_name("cv", sel["lr"], k)) / VAL_FEATURES)
            feats.append(saved[sel["epochs"] - 1])
            rows.append(va)
            where.append(np.arange(at, at + len(va)))
            at += len(va)
        rows_all = np.concatenate(rows)
        per_slice = np.concatenate(feats).astype(np.float64)
        return rows_all, stack_features(per_slice, exp.ds.rows.iloc[rows_all]), where

    def _range_model(self, sel: dict[str, Any]) -> tuple[RangeModel, Decoding, dict[str, Any]]:
        """The range model on every out-of-fold feature, and the decoding tuned on its own out-of-fold outputs."""
        exp = self.exp
        rows, x, where = self._oof_features(sel)
        y = exp.ds.rows.y.to_numpy()[rows]
        n_c = len(self.classes)
        oof = np.zeros((len(rows), n_c))
        for k, idx in enumerate(where):
            rest = np.concatenate([w for j, w in enumerate(where) if j != k])
            oof[idx] = RangeModel(n_c, self.seed("range", k)).fit(x[rest], y[rest]).predict_proba(x[idx])
        decoding, record = tune_decoding(oof, y, exp.ds.stacks(rows))
        out_of_fold(exp, [oof[idx] for idx in where], self.dir)
        return RangeModel(n_c, self.seed("range")).fit(x, y), decoding, record

    def _test(self, range_model: RangeModel, decoding: Decoding) -> dict[str, Any]:
        ds, rows = self.exp.test_set()
        proba = self.segment(ds, rows)
        x = stack_features(describe(ds, rows, proba, self.prep), ds.rows.iloc[rows])
        predictions, metrics = evaluate(ds, rows, range_model.predict_proba(x), self.task, decoding,
                                        self.exp.baselines)
        metrics["segmentation"] = dice_by_position(self.dices(ds, rows, proba), ds.rows.iloc[rows])
        write_test(self.dir, predictions, metrics)
        return metrics

    def _export(self, range_model: RangeModel, sel: dict[str, Any]) -> None:
        """model/: the segmenter (model.keras, kind "segment" in model.json), its encoder's weights (loadable as `--weights PATH` by the classification runs of
        the same backbone), the range model and model.json."""
        directory = model_dir(self.dir)
        directory.mkdir(parents=True, exist_ok=True)
        model = self.trainer().model
        atomic.atomic_write(directory / MODEL_FILE, model.save)
        encoder = keras.Model(model.inputs, model.get_layer(f"{SEG_PREFIX}up0").input)
        atomic.atomic_write(directory / ENCODER_WEIGHTS, encoder.save_weights)
        atomic.write_json(directory / RANGE_MODEL_FILE, range_model.to_dict())
        atomic.write_json(directory / MODEL_JSON, {
            "results_format": RESULTS_FORMAT, "run": self.name, "kind": "segment",
            "backbone": self.base.backbone.key, "depth": f"{self.base.depth}{SEGMENT_SUFFIX}",
            "classes": list(self.classes), "preprocessing": self.prep.key(),
            "encoder_weights": ENCODER_WEIGHTS, "range_model": RANGE_MODEL_FILE,
            "seg_classes": list(SEG_CLASSES), "decoding": {k: sel["decoding"][k] for k in ("kind", "offsets")},
            "code_version": code_version()})


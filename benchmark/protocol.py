"""The paper's protocol for one model: CV over (learning rate, fold) -> selection -> final fit -> test.

A model run is a small job graph; each job writes its output atomically into its own directory with a DONE marker,
so an interrupted run resumes where it stopped and a finished one is skipped:

    cv_lr<lr>_f<k>   depth 0 / CBR: the head (or whole CBR net) from its seeded initialisation
                     depth 1: starts from the depth-0 model of the SAME fold (foldinit_f<k> of the depth-0 run,
                     trained on that fold's training part only: no validation leak)
    selection        the LR and epoch count with the best fold-averaged validation metric (task.py: macro-F1, or
                     the lowest MAE for a regression); diverged LRs excluded
    foldinit_f<k>    (depth 0 only, on demand) the fold model at the selected LR and epochs, for depth 1
    final            retrained on the whole training pool for the selected epochs (depth 1: from the depth-0 final)
    test             predictions and metrics on the held-out patients

Training reads either cached tensors of the frozen part (cache.py) or images through the whole network (the
per-epoch path, `use_cache=False`); both run the same `train.fit`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import queue
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from data_prep.provenance import code_version, package_versions

from data_prep import atomic
from .cache import (CachedInputs, Views, bank_views, bytes_per_view, cache_key, cached_outputs, depth0_start,
                    plain_views, split_model, weights_fingerprint)
from .cpus import usable_cpus
from .data import Augmentation, Dataset, ImageInputs, Slots, folds_frame, oversample_factors
from .errors import BenchmarkInputError
from .baselines import baseline_metrics, baseline_predictions, scores
from .decode import Decoding, decode_stacks, tune_decoding
from .infer import feature_pass, predict
from .layout import (CONFIG, CV_HISTORY, DONE, ERROR, FOLDS, HEAD, HISTORY, JOB_JSON, MODEL_FILE, MODEL_JSON, RESULTS_FORMAT,
                     SELECTION, TARGET_PREDICTION, TEST_METRICS, TEST_PREDICTIONS, TIMING, VAL_OUTPUT, check_format,
                     job_dir, job_dir_name, job_seconds, model_dir, run_name, stack_run_name)
from .log import get as get_log
from .metrics import classification_metrics, higher_is_better, range_metrics, regression_metrics
from .preprocess import Preprocessing
from .profiles import Profile
from .registry import HEAD_DENSE, BackboneSpec, choose_weights
from .models import build_model, head, head_layers, set_depth
from .task import Task
from .train import FitSettings, Trainer, fit

SLICE_CLASSES = ("OAP", "IN", "OBS")
SOURCE_KEYS = ("macro_f1", "range_exact", "range_within1", "boundary_mae", "n_stacks")  # by_source, per test source

# ~0.5 s of head training on a 2-core CPU (0.5 ms a step), about what tracing a Trainer's functions costs
MIN_THREADED_FIT_STEPS = 1000
N_HEAD_ARRAYS = 2  # kernel and bias of each head Dense layer


def job_seed(*parts: Any) -> int:
    """A job's seed depends only on what the job is, never on the order jobs ran in."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little") % (2**31 - 1)


@dataclass
class Experiment:
    """What every model run of one invocation shares: data, split, folds, profile, output and cache places."""

    ds: Dataset
    pool: np.ndarray
    test: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]]
    profile: Profile
    seed: int
    out: Path
    cache_dir: Path
    weights: str                      # imagenet | none | auto | PATH
    task: Task
    use_cache: bool = True
    test_ds: Dataset | None = None
    data_desc: dict[str, Any] = field(default_factory=dict)
    input_kind: str = "2d"            # 2d | 2.5d (neighbouring slices as channels)
    bank_rows: np.ndarray | None = None  # rows the cached bank covers, when wider than the pool (see cache_views)

    @property
    def augment(self) -> bool:
        return self.augmentation.active

    @property
    def augmentation(self) -> Augmentation:
        return Augmentation(self.profile.rotation_deg, self.profile.intensity_gamma)

    @property
    def factors(self) -> np.ndarray:
        y = self.ds.rows.y.to_numpy()[self.pool]
        return oversample_factors(y, len(self.ds.classes), self.profile.oversample if self.task.oversampled else 1)

    def cache_views(self, k: int) -> Views:
        """Every view a cached fit can draw (k per training slot), then the test views.

        A label-efficiency subset asks for the bank of the whole pool it was drawn from, with oversampling that
        covers its own, so every subset of one pool gets the same views, the same cache key and one feature pass.
        """
        rows = self.pool if self.bank_rows is None else self.bank_rows
        wide = oversample_factors(self.ds.rows.y.to_numpy()[rows], len(self.ds.classes), self.profile.oversample)
        return bank_views(self.ds, rows, np.maximum(self.factors, wide), k, self.augment) + plain_views(self.test)

    def write_folds(self, directory: Path) -> None:
        atomic.write_csv(directory / FOLDS, folds_frame(self.ds, self.pool, self.test, self.folds))

    @property
    def slice_ranges(self) -> bool:
        """OAP/IN/OBS stacks: range metrics, decoding, baselines and stack models apply."""
        return self.ds.classes == SLICE_CLASSES and self.ds.has_stacks and self.task.has_classes

    @property
    def stack_models(self) -> bool:
        """Whether each pretrained depth-0 run gets a stack-context model beside it (stack.py): it reads the
        cached features, so the cached path is needed."""
        return self.profile.stack_model and self.use_cache and self.slice_ranges

    def test_set(self) -> tuple[Dataset, np.ndarray]:
        """(dataset, rows) of the held-out test slices."""
        if self.test_ds is not None:
            return self.test_ds, np.arange(len(self.test_ds.rows))
        return self.ds, self.test

    @functools.cached_property
    def baselines(self) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
        """The baselines' test predictions (baselines.baseline_predictions), trained on the pool with its folds."""
        ds, rows = self.test_set()
        train = self.ds.rows.loc[self.pool].reset_index(drop=True)
        at = {r: i for i, r in enumerate(self.pool)}
        folds = [(np.array([at[r] for r in tr]), np.array([at[r] for r in va])) for tr, va in self.folds]
        return baseline_predictions(train, self.ds.rows.y.to_numpy()[self.pool], folds,
                                    ds.rows.iloc[rows].reset_index(drop=True), len(self.ds.classes))


class ModelRun:
    """One backbone at one depth (or one CBR baseline) under an Experiment; see the module docstring."""

    def __init__(self, exp: Experiment, spec: BackboneSpec, depth: int):
        if not spec.pretrained and depth != 0:
            raise BenchmarkInputError(f"{spec.key} is trained from scratch: it has no depth {depth}")
        self.exp, self.spec, self.depth = exp, spec, depth
        self.name = run_name(spec.key, depth)
        self.dir = exp.out / self.name
        p = self.profile = exp.profile.for_backbone(spec)
        self.prep = Preprocessing(p.input_size(spec), spec.preprocess_mode, input_kind=exp.input_kind)
        self.weights_path = self._weights()
        self.lrs = p.lrs(depth, spec.pretrained, exp.task.has_target)
        self.classes = exp.ds.classes
        self.task = exp.task
        self.targets = self.task.targets(exp.ds.rows)
        self._model: keras.Model | None = None
        self._input_state: tuple | None = None
        self._trainer_obj: Trainer | None = None
        self.timing: dict[str, float] = {}
        # set by an executor that runs jobs in this process: CV fits may then run in threads (parallel_fits)
        self.threads_allowed = False

    # ---- configuration and provenance -------------------------------------------------------------------------
    def _weights(self) -> str | None:
        self.weights_choice, path = choose_weights(self.spec, self.exp.weights, self.prep.input_size)
        return path

    def config(self) -> dict[str, Any]:
        return {
            "results_format": RESULTS_FORMAT,
            "run": self.name,
            "backbone": self.spec.key,
            "backbone_name": self.spec.name,
            "depth": self.depth if self.spec.pretrained else "scratch",
            "weights": self.weights_choice,
            "weights_file": weights_fingerprint(self.weights_path),
            "preprocessing": self.prep.key(),
            "profile": self.profile.to_dict(),
            "seed": self.exp.seed,
            "data": self.exp.data_desc,
            **self.task.describe(),
            "classes": list(self.classes),
            "learning_rates": list(self.lrs),
            "cached_path": self.exp.use_cache,
            "code_version": code_version(),
            "versions": package_versions(),
        }

    def prepare(self, force: bool) -> bool:
        """Check the run directory (check_dir) and, unless the run is complete, start it: config.json, folds.csv."""
        return prepare_run_dir(self.dir, self.config(), self.exp, force)

    def check_dir(self, force: bool) -> bool:
        """True if this run is already complete. Refuses a directory made with other settings unless forced."""
        return check_run_dir(self.dir, self.config(), force)

    # ---- model and inputs ---------------------------------------------------------------------------------------
    @property
    def model(self) -> keras.Model:
        if self._model is None:
            keras.utils.set_random_seed(job_seed(self.exp.seed, self.name, "build"))
            self._model = build_model(self.spec, self.prep.input_size, len(self.classes),
                                      weights=self.weights_path, dropout=self.profile.dropout,
                                      seed=job_seed(self.exp.seed, self.name, "head"), **self.task.head_kwargs())
            set_depth(self._model, self.spec, self.depth)
            self.start = (depth0_start(self._model) if self.depth == 0 and self.spec.pretrained
                          else self._first_trainable())
            self._initial = {l.name: l.get_weights() for l in self._model.layers[self.start:]}
        return self._model

    def _first_trainable(self) -> int:
        return next(i for i, l in enumerate(self._model.layers) if l.trainable and l.weights)

    @property
    def cacheable(self) -> bool:
        return self.exp.use_cache

    def _inputs(self) -> tuple[keras.Model, Any, int | None]:
        """(trainable model, its Inputs, views per slot to draw from) for this run's path, built once."""
        if self._input_state is None:
            self._input_state = self._cached_inputs() if self.cacheable else None
        if self._input_state is None:
            exp = self.exp
            self._input_state = (self.model, ImageInputs(exp.ds, self.prep, exp.seed, exp.augmentation),
                                 None)
        return self._input_state

    def _cached_inputs(self):
        """Cache what does not train: the frozen prefix's outputs, or for CBR nets (all trainable) the preprocessed
        input views themselves, which still saves the per-image preprocessing of every epoch."""
        exp, model, p = self.exp, self.model, self.profile
        if self.spec.pretrained:
            prefix, trainable = split_model(model, self.start)
        else:
            prefix, trainable = None, model
        per_view = bytes_per_view(prefix, p.cache_dtype, self.prep)
        views = exp.cache_views(p.bank_views)
        need = per_view * len(views) * 3  # on disk, plus the float32 copy training reads from memory
        if need > p.cache_budget_gb * 2**30:
            get_log("protocol").warning(f"{self.name}: cache would need {need / 2**30:.1f} GiB (> cache_budget_gb "
                                        f"{p.cache_budget_gb}); using the per-epoch path")
            return None
        run = feature_pass(p.feature_precision, p.feature_batch)
        key = cache_key(backbone=self.spec.key, weights=weights_fingerprint(self.weights_path),
                        prep=self.prep.key(), data=exp.ds.content_sha256, views=views.digest(),
                        start=model.layers[self.start].name if prefix is not None else "input", seed=exp.seed,
                        rotation=p.rotation_deg, dtype=p.cache_dtype, precision=run.precision,
                        keras=keras.__version__,
                        **({"intensity": p.intensity_gamma} if p.intensity_gamma else {}))
        t0 = time.perf_counter()
        arrays = cached_outputs(prefix, exp.ds, self.prep, views, cache_dir=exp.cache_dir, key=key, seed=exp.seed,
                                augmentation=exp.augmentation, run=run, dtype=p.cache_dtype,
                                describe={"backbone": self.spec.key, "run": self.name, "bytes_per_view": per_view})
        self.timing["feature_pass_s"] = self.timing.get("feature_pass_s", 0.0) + time.perf_counter() - t0
        self.timing["cache_bytes_per_view"] = per_view
        self.timing["feature_pass"] = {"precision": run.precision, "batch_size": run.batch_size}
        return trainable, CachedInputs(arrays, views, exp.augment), p.bank_views if exp.augment else 1

    # ---- jobs ----------------------------------------------------------------------------------------------------
    def _job_dir(self, name: str) -> Path:
        return job_dir(self.dir, name)

    def marker(self, step: str, lr: float | None = None, fold: int | None = None) -> Path:
        return self.marker_of(self.exp, self.spec.key, self.depth, step, lr, fold)

    @staticmethod
    def marker_of(exp: Experiment, backbone: str, depth: int, step: str, lr: float | None = None,
                  fold: int | None = None) -> Path:
        """The file whose presence says a job is complete (it is written last, after the job's outputs)."""
        run_dir = exp.out / run_name(backbone, depth)
        if step == "select":
            return run_dir / SELECTION
        if step == "test":
            return run_dir / DONE
        if step == "stack":
            return exp.out / stack_run_name(run_dir.name) / DONE
        return job_dir(run_dir, job_dir_name(step, lr, fold)) / DONE

    def features(self) -> None:
        """Compute (or load) what the fits of this run read, before the CV jobs fan out."""
        t0 = time.perf_counter()
        self._inputs()
        d = self._job_dir("features")
        atomic.write_json(d / JOB_JSON, {"seconds": time.perf_counter() - t0,
                                           "cache_bytes_per_view": self.timing.get("cache_bytes_per_view"),
                                           "feature_pass": self.timing.get("feature_pass")})
        atomic.write_text(d / DONE, "")

    def _init_weights(self, job: str, fold: int | None, target: keras.Model | None = None) -> None:
        """Reset the trainable part for a job: initial (ImageNet) block weights and the job's head start. `target`
        is the trainable model the job trains (default: this run's own; a copy in a parallel CV fit)."""
        model = self.model
        target = target or self._inputs()[0]
        if not self.spec.pretrained:
            keras.utils.set_random_seed(job_seed(self.exp.seed, self.name, job))
            fresh = build_model(self.spec, self.prep.input_size, len(self.classes), dropout=self.profile.dropout,
                                seed=job_seed(self.exp.seed, self.name, job, "head"), **self.task.head_kwargs())
            target.set_weights(fresh.get_weights())
            return
        for name, weights in self._initial.items():
            target.get_layer(name).set_weights(weights)
        if self.depth == 0:
            head = _seeded_head(model, self.task, self.profile.dropout, job_seed(self.exp.seed, self.name, job))
        else:
            head = self.depth0.fold_head(fold) if fold is not None else self.depth0.final_head()
        for name, w in head.items():
            target.get_layer(name).set_weights(w)

    @functools.cached_property
    def depth0(self) -> "ModelRun":
        """The depth-0 run of the same backbone, whose fold and final models depth-1 fits start from."""
        return ModelRun(self.exp, self.spec, 0)

    def _head_weights(self) -> dict[str, list[np.ndarray]]:
        return {n: self.model.get_layer(n).get_weights() for n in head_layers(self.model)}

    def _new_trainer(self, trainable: keras.Model) -> Trainer:
        p = self.profile
        xla = self.spec.depth1_xla if p.jit_compile_depth1 is None else p.jit_compile_depth1
        return Trainer(trainable, batch_size=p.batch_size, momentum=p.momentum, decay_rate=p.decay_rate,
                       task=self.task, jit_compile=xla and self.depth == 1 and self.spec.pretrained)

    def _trainer(self) -> Trainer:
        if self._trainer_obj is None:
            self._trainer_obj = self._new_trainer(self._inputs()[0])
        return self._trainer_obj

    def _train(self, job: str, train_rows: np.ndarray, lr: float, epochs: int, fold: int | None,
               val_rows: np.ndarray | None, trainer: Trainer | None = None, outputs: list | None = None):
        _, inputs, draws = self._inputs()
        trainer = trainer or self._trainer()
        self._init_weights(job, fold, trainer.model)
        slots = Slots.build(self.exp.ds, train_rows, self.exp.factors)
        # the data seed of a fit depends on the fold, not the LR: every LR of a fold sees the same batches
        s = FitSettings(lr=lr, epochs=epochs, draws=draws,
                        seed=job_seed(self.exp.seed, self.name, job if fold is None else f"fold{fold}", "data"))
        return fit(trainer, inputs, slots, self.targets, s, self.task, val_rows=val_rows,
                   desc=f"{self.name} {job}", outputs=outputs)

    def cv_job(self, lr: float, fold: int, trainer: Trainer | None = None, concurrent: int = 1) -> pd.DataFrame:
        """One CV fit (`concurrent`: how many fits ran at once with it, recorded in its job.json)."""
        job = job_dir_name("cv", lr, fold)
        d = self._job_dir(job)
        if self.marker("cv", lr, fold).is_file():
            return pd.read_csv(d / HISTORY)
        t0 = time.perf_counter()
        tr, va = self.exp.folds[fold]
        outputs: list[np.ndarray] = []
        hist, diverged = self._train(job, tr, lr, self.profile.epochs, fold, va, trainer, outputs)
        if self.exp.slice_ranges and outputs:
            kept = np.stack(outputs)[..., :len(self.classes)].astype(np.float16)
            atomic.atomic_write(d / VAL_OUTPUT, lambda p: np.save(p, kept))
        hist.insert(0, "fold", fold)
        hist.insert(0, "lr", lr)
        hist["diverged"] = diverged
        atomic.write_csv(d / HISTORY, hist)
        atomic.write_json(d / JOB_JSON, {"seconds": time.perf_counter() - t0, "diverged": diverged,
                                           "concurrent_fits": concurrent})
        atomic.write_text(d / DONE, "")
        # selection must see the same numbers whether a job ran now or in an earlier, interrupted process
        return pd.read_csv(d / HISTORY)

    def parallel_fits(self) -> int:
        """How many CV fits run at once. A cached depth-0 run's fits train only the head, a step so small that
        TensorFlow runs it on one core, and each fit also waits on Python between epochs; so where the executor
        allows threads they run `profile.cv_threads` at a time, by default one more than the cores, at most 4.
        The paper profile's 15 depth-0 fits on ACDC took 20.5 s one at a time, 14.5 s two at a time, 11.9 s
        three at a time and 13.1 s four at a time on a 2-core CPU. Each extra thread's Trainer costs
        ~0.5 s of tracing, so by default short fits (under MIN_THREADED_FIT_STEPS training steps) run one at a
        time. Other runs' fits keep the cores busy on their own: one at a time."""
        if not (self.threads_allowed and self.spec.pretrained and self.depth == 0 and self.cacheable):
            return 1
        if self.profile.cv_threads:
            return self.profile.cv_threads
        if self._cv_fit_steps < MIN_THREADED_FIT_STEPS:
            return 1
        return min(4, usable_cpus() + 1)

    @functools.cached_property
    def _cv_fit_steps(self) -> int:
        """Training steps of one CV fit (fold 0's)."""
        slots = len(Slots.build(self.exp.ds, self.exp.folds[0][0], self.exp.factors))
        return self.profile.epochs * math.ceil(slots / self.profile.batch_size)

    @property
    def _cv_pairs(self) -> list[tuple[float, int]]:
        return [(lr, k) for lr in self.lrs for k in range(len(self.exp.folds))]

    def cv_jobs(self, pairs: list[tuple[float, int]] | None = None) -> None:
        """Run the (LR, fold) CV jobs not done yet (default: all of this run's), `parallel_fits()` at a time.

        Each thread trains its own copy of the trainable part with its own Trainer, on the shared cached inputs;
        a fit depends only on its own settings (Trainer.reset), so the results equal those of one fit at a time.
        """
        pairs = [(lr, k) for lr, k in pairs or self._cv_pairs if not self.marker("cv", lr, k).is_file()]
        n = min(self.parallel_fits(), len(pairs))
        if n < 2:
            for lr, k in pairs:
                self.cv_job(lr, k)
            return
        trainers: queue.SimpleQueue[Trainer] = queue.SimpleQueue()
        trainers.put(self._trainer())
        trainable = self._inputs()[0]
        for _ in range(n - 1):
            copy = keras.models.clone_model(trainable)
            copy.set_weights(trainable.get_weights())
            trainers.put(self._new_trainer(copy))

        def one(pair: tuple[float, int]) -> None:
            trainer = trainers.get()
            try:
                self.cv_job(*pair, trainer=trainer, concurrent=n)
            finally:
                trainers.put(trainer)

        with ThreadPoolExecutor(max_workers=n) as pool:
            for _ in pool.map(one, pairs):  # re-raises the first failure
                pass

    def cv(self) -> pd.DataFrame:
        self.cv_jobs()
        parts = [self.cv_job(lr, k) for lr, k in self._cv_pairs]
        hist = pd.concat(parts, ignore_index=True)
        atomic.write_csv(self.dir / CV_HISTORY, hist)
        return hist

    def selection(self) -> dict[str, Any]:
        path = self.dir / SELECTION
        if path.is_file():
            return atomic.read_json(path)
        metric = self.task.selection_metric(self.profile.selection_metric)
        sel = select(self.cv(), metric, self.lrs, len(self.exp.folds), lower_is_better=not higher_is_better(metric))
        if self.exp.slice_ranges:
            sel["decoding"] = self._tuned_decoding(sel)
        atomic.write_json(path, sel)
        return sel

    def _tuned_decoding(self, sel: dict[str, Any]) -> dict[str, Any]:
        """The decoding tuned on the out-of-fold validation outputs at the selected LR and epoch count."""
        probas = []
        for k in range(len(self.exp.folds)):
            path = self._job_dir(job_dir_name("cv", sel["lr"], k)) / VAL_OUTPUT
            if not path.is_file():  # CV jobs of an older version kept no outputs
                return {**Decoding().to_dict(), "tuned_on": f"nothing ({path.name} of fold {k} missing)"}
            probas.append(np.load(path)[sel["epochs"] - 1].astype(np.float64))
        return decoding_on_folds(self.exp, probas)[1]

    def decoding(self) -> Decoding | None:
        """How this run's class probabilities become IN ranges (selection.json; plain monotone where an older
        selection recorded none); None without slice ranges."""
        if not self.exp.slice_ranges:
            return None
        return Decoding.from_dict(self.selection().get("decoding", Decoding().to_dict()))

    def fold_head(self, fold: int) -> dict[str, list[np.ndarray]]:
        """Depth-0 model of one fold at the selected LR and epochs (what a depth-1 fold starts from)."""
        job = job_dir_name("foldinit", fold=fold)
        return self._saved_head(job, lambda: self._train(
            job, self.exp.folds[fold][0], self.selection()["lr"], self.selection()["epochs"],
            fold, None))

    def final_head(self) -> dict[str, list[np.ndarray]]:
        if not self.marker("final").is_file():  # when it is, head.npz is all a depth-1 fit needs: no model load
            self.final()
        return self._saved_head("final", None)

    def _saved_head(self, job: str, train) -> dict[str, list[np.ndarray]]:
        d = self._job_dir(job)
        if not (d / DONE).is_file():
            t0 = time.perf_counter()
            train()
            atomic.write_json(d / JOB_JSON, {"seconds": time.perf_counter() - t0})
            self._save_head(d)
        with np.load(d / HEAD) as z:
            return {n: [z[f"{n}/{i}"] for i in range(N_HEAD_ARRAYS)] for n in {k.split("/")[0] for k in z.files}}

    def _save_head(self, d: Path) -> None:
        arrays = {f"{n}/{i}": w for n, ws in self._head_weights().items() for i, w in enumerate(ws)}
        atomic.atomic_write(d / HEAD, lambda p: np.savez(p, **arrays))
        atomic.write_text(d / DONE, "")

    def final(self) -> keras.Model:
        d = self._job_dir("final")
        model_path = model_dir(self.dir) / MODEL_FILE
        if (d / DONE).is_file() and model_path.is_file():  # finished by an earlier, interrupted process
            self.model.set_weights(keras.models.load_model(model_path, compile=False).get_weights())
            return self.model
        sel = self.selection()
        t0 = time.perf_counter()
        hist, diverged = self._train("final", self.exp.pool, sel["lr"], sel["epochs"], None, None)
        if diverged:
            raise RuntimeError(f"{self.name}: the final fit diverged at LR {sel['lr']}")
        atomic.write_csv(d / HISTORY, hist)
        atomic.write_json(d / JOB_JSON, {"seconds": time.perf_counter() - t0})
        self._export(model_path.parent)
        if self.spec.pretrained:
            self._save_head(d)
        atomic.write_text(d / DONE, "")
        return self.model

    def _export(self, directory: Path) -> None:
        """A self-contained model directory: the Keras model plus everything `predict` needs to use it."""
        atomic.atomic_write(directory / MODEL_FILE, self.model.save)
        atomic.write_json(directory / MODEL_JSON, {
            "results_format": RESULTS_FORMAT, "backbone": self.spec.key, "depth": self.depth,
            "classes": list(self.classes), **self.task.describe(), "outputs": self._output_columns(),
            "preprocessing": self.prep.key(), "code_version": code_version(), "keras": keras.__version__,
            **({"decoding": decoding.to_dict()} if (decoding := self.decoding()) else {})})

    def _output_columns(self) -> list[str]:
        """What each column of the model's output is (the target in its own units, see models.head)."""
        return ([f"p_{c}" for c in self.classes] if self.task.has_classes else []) + \
            ([self.task.target] if self.task.has_target else [])

    def test(self) -> dict[str, Any]:
        self.final()
        exp = self.exp
        t0 = time.perf_counter()
        ds, rows = exp.test_set()
        if len(rows) == 0:
            raise BenchmarkInputError("no test rows: give --test-fraction, --test-data or a manifest split column")
        if ds is exp.ds:
            trainable, inputs, _ = self._inputs()
            output = predict(trainable, inputs.plain(rows))
        else:
            output = predict(self.model, [ds.make_inputs(rows, self.prep)])
        if not np.isfinite(output).all():  # a final fit can blow up without its training loss reaching inf
            raise RuntimeError(f"{self.name}: the final model's test outputs are not finite (the final fit at LR "
                               f"{self.selection()['lr']:g} diverged)")
        if ds is exp.ds:
            check = rows[:8]
            direct = predict(self.model, [ds.make_inputs(check, self.prep)])
            # a target's tolerance scales with its SD (pixel counts are not probabilities)
            diff = np.abs(direct - output[:len(check)]) / self.task.output_scale()
            if not (diff <= 5e-2).all():
                raise RuntimeError(f"{self.name}: the exported model disagrees with the cached path on test images "
                                   f"(max diff {diff.max():.3g} in output units / SD)")
        metrics = self._write_test(ds, rows, output)
        atomic.write_json(self._job_dir("test") / JOB_JSON, {"seconds": time.perf_counter() - t0})
        return metrics

    def _write_test(self, ds: Dataset, rows: np.ndarray, output: np.ndarray) -> dict[str, Any]:
        task = self.task
        out = ds.rows.loc[rows, ["patient", "frame", "slice", "label"]].reset_index(drop=True)
        metrics: dict[str, Any] = {}
        if task.has_classes:
            columns, metrics = class_test(ds, rows, output[:, :len(self.classes)], self.classes, self.decoding(),
                                          self.exp)
            for name, values in columns.items():
                out[name] = values
        if task.has_target:
            out["target"] = truth = ds.rows["target"].to_numpy()[rows]
            out[TARGET_PREDICTION[task.kind]] = output[:, -1]
            # the baseline predicts the training pool's mean, the value the head's rescale is centred on
            metrics.update(regression_metrics(truth, output[:, -1], task.mean))
        atomic.write_csv(self.dir / TEST_PREDICTIONS, out)
        atomic.write_json(self.dir / TEST_METRICS, metrics)
        return metrics

    # ---- the whole run ---------------------------------------------------------------------------------------------
    def test_job(self) -> dict[str, Any]:
        """The last job: test, then timing.json and the run's DONE marker."""
        metrics = self.test()
        atomic.write_json(self.dir / TIMING, job_seconds(self.dir))
        atomic.write_text(self.dir / DONE, "")
        return metrics

    def run(self, force: bool = False) -> dict[str, Any]:
        """This run's jobs in order, in this process (jobs.py runs whole grids, on any executor)."""
        if not self.prepare(force):
            if self.depth == 1:
                self.depth0.selection()  # depth-1 folds need the depth-0 selection
            if self.cacheable:
                self.features()
            self.selection()
            self.test_job()
        return atomic.read_json(self.dir / TEST_METRICS)


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config.json that must match for results on disk to be reused."""
    c = json.loads(json.dumps(config, default=str))  # as it reads back from config.json
    data = {k: v for k, v in c.get("data", {}).items() if k != "path"}  # the same data may live elsewhere
    if data.get("test_data"):
        data["test_data"] = {k: data["test_data"].get(k) for k in ("manifest_sha256", "content_sha256")}
    return {**{k: c.get(k) for k in ("results_format", "run", "weights", "weights_file", "preprocessing",
                                     "profile", "seed", "classes", "cached_path", "target", "stack_model")},
            "task": c.get("task", "classification"), "data": data}  # results made before tasks classified


def check_run_dir(directory: Path, config: dict[str, Any], force: bool) -> bool:
    """True if the run in `directory` is complete. Refuses a directory made with other settings unless forced
    (then it is removed and redone)."""
    cfg_path = directory / CONFIG
    if force and directory.exists():
        shutil.rmtree(directory)
    if cfg_path.is_file():
        old = atomic.read_json(cfg_path)
        check_format(cfg_path, old, fix="use another --out, or --force to redo it")
        mine, theirs = _identity(config), _identity(old)
        diff = [k for k in mine if theirs[k] != mine[k]]
        if diff:
            raise BenchmarkInputError(f"{directory} holds a run made with other settings ({', '.join(diff)}); "
                                      f"use another --out, or --force to redo it")
    return (directory / DONE).is_file()


def prepare_run_dir(directory: Path, config: dict[str, Any], exp: Experiment, force: bool) -> bool:
    """True if the run in `directory` is complete (check_run_dir); else it is started: config.json, folds.csv."""
    if check_run_dir(directory, config, force):
        return True
    directory.mkdir(parents=True, exist_ok=True)
    atomic.write_json(directory / CONFIG, config)
    exp.write_folds(directory)
    (directory / ERROR).unlink(missing_ok=True)  # from an earlier attempt; this one starts afresh
    return False


def class_test(ds: Dataset, rows: np.ndarray, proba: np.ndarray, classes: tuple[str, ...],
               decoding: Decoding | None, exp: Experiment) -> tuple[dict[str, Any], dict[str, Any]]:
    """(test_predictions.csv columns, test_metrics.json) of class probabilities on test rows.

    The top level scores the argmax. With slice ranges there is also `monotone` (the plain monotone decoding),
    `decoded` (the decoding chosen on validation, `decoding`: the run's headline range figures) and `baselines`
    ("every slice IN" and the position-only model, scored on the same stacks).
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
    baselines = exp.baselines
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


def decoding_on_folds(exp: Experiment, fold_outputs: list[np.ndarray]) -> tuple[Decoding, dict[str, Any]]:
    """The decoding tuned (decode.tune_decoding) on out-of-fold validation outputs, one array per fold of
    `exp.folds` with its validation rows in fold order."""
    pool = np.concatenate([va for _, va in exp.folds])
    return tune_decoding(np.concatenate(fold_outputs), exp.ds.rows.y.to_numpy()[pool], exp.ds.stacks(pool))


def write_class_test(directory: Path, ds: Dataset, rows: np.ndarray, proba: np.ndarray, classes: tuple[str, ...],
                     decoding: Decoding | None, exp: Experiment) -> dict[str, Any]:
    """class_test written as the run's test_predictions.csv and test_metrics.json."""
    out = ds.rows.loc[rows, ["patient", "frame", "slice", "label"]].reset_index(drop=True)
    columns, metrics = class_test(ds, rows, proba, classes, decoding, exp)
    for name, values in columns.items():
        out[name] = values
    atomic.write_csv(directory / TEST_PREDICTIONS, out)
    atomic.write_json(directory / TEST_METRICS, metrics)
    return metrics


def _seeded_head(model: keras.Model, task: Task, dropout: float, seed: int) -> dict[str, list[np.ndarray]]:
    """Initial head weights for a seed, built on a throwaway input of the pooled width."""
    pooled = keras.Input((model.get_layer(HEAD_DENSE).input.shape[-1],))
    fresh = keras.Model(pooled, head(pooled, len(task.classes), dropout=dropout, seed=seed, **task.head_kwargs()))
    return {n: fresh.get_layer(n).get_weights() for n in head_layers(fresh)}


def select(hist: pd.DataFrame, metric: str, lrs, n_folds: int, *, lower_is_better: bool = False) -> dict[str, Any]:
    """Best (LR, epoch count) by the fold-averaged validation metric (highest, or lowest with `lower_is_better`);
    ties go to fewer epochs, then the grid order.

    An LR with any diverged fold is excluded (its history stays on disk).
    """
    col = f"val_{metric}"
    bad = sorted(set(hist.loc[hist["diverged"].astype(bool), "lr"]))
    ok = hist[~hist["lr"].isin(bad)]
    if ok.empty:
        raise RuntimeError(f"every learning rate diverged ({', '.join(f'{lr:g}' for lr in lrs)})")
    mean = ok.groupby(["lr", "epoch"])[col].agg(["mean", "std", "count"]).reset_index()
    mean = mean[mean["count"] == n_folds]
    order = {lr: i for i, lr in enumerate(lrs)}
    mean["lr_order"] = mean["lr"].map(order)
    best = mean.sort_values(["mean", "epoch", "lr_order"], ascending=[lower_is_better, True, True]).iloc[0]
    return {"metric": col, "lower_is_better": lower_is_better, "lr": float(best["lr"]), "epochs": int(best["epoch"]),
            "cv_mean": float(best["mean"]), "cv_sd": float(best["std"]), "diverged_lrs": [float(x) for x in bad]}

"""The paper's protocol for one model: CV over (learning rate, fold) -> selection -> final fit -> test.

A model run is a small job graph (jobs.py owns it and every dependency in it); each job writes its output atomically
into its own directory with a DONE marker, so an interrupted run resumes where it stopped and a finished one is
skipped:

    features         the frozen part's outputs for the augmentation bank (cached path only)
    cv_lr<lr>_f<k>   depth 0 / CBR: the head (or whole CBR net) from its seeded initialisation
                     depth 1: starts from the depth-0 model of the SAME fold (foldinit_f<k> of the depth-0 run,
                     trained on that fold's training part only: no validation leak), which the graph hands it
    selection        the LR and epoch count with the best fold-averaged validation metric (task.py: macro-F1, or
                     the lowest MAE for a regression); diverged LRs excluded
    foldinit_f<k>    (depth 0, when depth 1 is planned) the fold model at the selected LR and epochs, for depth 1
    final            retrained on the whole training pool for the selected epochs (depth 1: from the depth-0 final
                     head); exported as model/
    test             predictions and metrics on the held-out patients; with slice ranges also the out-of-fold
                     predictions and metrics over the training pool (the CV jobs' validation outputs at the selection)

The parts: run_spec.RunSpec says what a run is (config.json); fits.py builds its network and inputs and runs a fit
from a FitPlan; evaluate.py scores test outputs; ModelRun below runs each job with them.
"""
from __future__ import annotations

import functools
import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from data_prep import atomic
from data_prep.provenance import code_version

from .baselines import CONSTANT, POSITION, baseline_predictions, constant_baseline, position_out_of_fold
from .cache import Views, bank_views, plain_views
from .data import Augmentation, Dataset, folds_frame, oversample_factors
from .decode import Decoding, tune_decoding
from .errors import BenchmarkInputError
from .fits import (FitInputs, Head, Network, build_inputs, build_network, cv_pairs, cv_plan, final_plan,
                   foldinit_plan, new_trainer, run_fit, save_head)
from .evaluate import cross_fitted_decoding, evaluate, test_outputs, write_out_of_fold, write_test
from .layout import (CV_HISTORY, DONE, FOLDS, HISTORY, JOB_JSON, MODEL_FILE, MODEL_JSON, RESULTS_FORMAT, SELECTION,
                     TIMING, VAL_OUTPUT, JobClock, job_dir_name, job_seconds, model_dir)
from .metrics import higher_is_better
from .profiles import Profile
from .registry import BackboneSpec
from .run_spec import RunSpec
from .task import Task
from .train import Trainer

SLICE_CLASSES = ("OAP", "IN", "OBS")
HEADS = ("classify", "segment")


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
    heads: tuple[str, ...] = ("classify",)  # HEADS this experiment trains: the classifiers, the segmentation head

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

    @functools.cached_property
    def oof_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows of ds, fold of each) of the out-of-fold predictions: every fold's validation rows in fold order, the
        order in which the CV jobs' validation outputs concatenate."""
        return (np.concatenate([va for _, va in self.folds]),
                np.concatenate([np.full(len(va), k) for k, (_, va) in enumerate(self.folds)]))

    @functools.cached_property
    def oof_baselines(self) -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
        """The baselines on the out-of-fold rows (oof_rows): every slice IN, and each fold's position model on its
        validation rows, decoded cross-fitted as the models' out-of-fold predictions are."""
        rows, fold = self.oof_rows
        at = {r: i for i, r in enumerate(rows)}
        folds = [(np.array([at[r] for r in tr]), np.array([at[r] for r in va])) for tr, va in self.folds]
        train, y = self.ds.rows.loc[rows].reset_index(drop=True), self.ds.rows.y.to_numpy()[rows]
        proba = position_out_of_fold(train, y, folds, len(self.ds.classes))
        stacks = self.ds.stacks(rows)
        decoding = cross_fitted_decoding(proba, y, stacks, fold)
        return {CONSTANT: constant_baseline(len(rows), len(self.ds.classes)),
                POSITION: (proba, decoding.apply(proba, stacks), decoding.to_dict())}


class ModelRun:
    """The jobs of one model run (see the module docstring) over its RunSpec. A job reads what the job graph hands
    it (a depth-1 fit: the depth-0 head it starts from) and what the jobs it needs wrote, then writes its outputs
    and, last, its marker. The network, fit inputs and trainer are built at a job's first need and kept for the
    next job of the same run in this process."""

    def __init__(self, exp: Experiment, backbone: BackboneSpec, depth: int):
        self.spec = RunSpec.of(exp, backbone, depth)
        self._network: Network | None = None
        self._inputs: FitInputs | None = None
        self._trainer: Trainer | None = None

    def network(self) -> Network:
        if self._network is None:
            self._network = build_network(self.spec)
        return self._network

    def fit_inputs(self) -> FitInputs:
        if self._inputs is None:
            self._inputs = build_inputs(self.spec, self.network())
        return self._inputs

    def trainer(self) -> Trainer:
        """The Trainer of the run's trainable part (one compiled step for all of the run's fits)."""
        if self._trainer is None:
            self._trainer = new_trainer(self.spec, self.fit_inputs().trainable)
        return self._trainer

    # ---- jobs ------------------------------------------------------------------------------------------------------
    def features(self) -> None:
        """Compute (or load) what the fits of this run read, before the CV jobs fan out."""
        clock = JobClock()
        cost = self.fit_inputs().cache_cost
        d = self.spec.job_dir("features")
        atomic.write_json(d / JOB_JSON, clock.record(cache_bytes_per_view=cost.get("cache_bytes_per_view"),
                                                     feature_pass=cost.get("feature_pass")))
        atomic.write_text(d / DONE, "")

    def cv_job(self, lr: float, fold: int, start: Head | None = None, trainer: Trainer | None = None,
               concurrent: int = 1) -> pd.DataFrame:
        """One CV fit: its history as written (`start`: at depth 1 the depth-0 head of the fold; `trainer`: a
        copy's in a threaded sweep; `concurrent`: how many fits ran at once with it, recorded in its job.json)."""
        spec = self.spec
        plan = cv_plan(spec, lr, fold, start)
        d = spec.job_dir(plan.job)
        clock = JobClock()
        outputs: list[np.ndarray] = []
        hist, diverged = run_fit(spec, self.network(), self.fit_inputs(), trainer or self.trainer(), plan, outputs)
        if spec.exp.slice_ranges and outputs:
            kept = np.stack(outputs)[..., :len(spec.classes)].astype(np.float16)
            atomic.atomic_write(d / VAL_OUTPUT, lambda p: np.save(p, kept))
        hist.insert(0, "fold", fold)
        hist.insert(0, "lr", lr)
        hist["diverged"] = diverged
        atomic.write_csv(d / HISTORY, hist)
        atomic.write_json(d / JOB_JSON, clock.record(diverged=diverged, concurrent_fits=concurrent))
        atomic.write_text(d / DONE, "")
        # selection must see the same numbers whether a job ran now or in an earlier, interrupted process
        return pd.read_csv(d / HISTORY)

    def cv_sweep(self, threads: int) -> None:
        """Every CV fit of the run not done yet, `threads` at a time (fits.parallel_fits; depth 0, so no fit needs
        a start head).

        Each thread trains its own copy of the trainable part with its own Trainer, on the shared cached inputs;
        a fit depends only on its own settings (Trainer.reset), so the results equal those of one fit at a time.
        """
        pairs = [(lr, k) for lr, k in cv_pairs(self.spec)
                 if not (self.spec.job_dir(job_dir_name("cv", lr, k)) / DONE).is_file()]
        n = min(threads, len(pairs))
        if n < 2:
            for lr, k in pairs:
                self.cv_job(lr, k)
            return
        trainers: queue.SimpleQueue[Trainer] = queue.SimpleQueue()
        trainers.put(self.trainer())
        trainable = self.fit_inputs().trainable
        for _ in range(n - 1):
            copy = keras.models.clone_model(trainable)
            copy.set_weights(trainable.get_weights())
            trainers.put(new_trainer(self.spec, copy))

        def one(pair: tuple[float, int]) -> None:
            trainer = trainers.get()
            try:
                self.cv_job(*pair, trainer=trainer, concurrent=n)
            finally:
                trainers.put(trainer)

        with ThreadPoolExecutor(max_workers=n) as pool:
            for _ in pool.map(one, pairs):  # re-raises the first failure
                pass

    def selection(self) -> dict[str, Any]:
        """cv_history.csv from every CV job's history, and selection.json: the selected LR and epoch count (with
        slice ranges also the decoding tuned at them)."""
        spec = self.spec
        hist = pd.concat([pd.read_csv(spec.job_dir(job_dir_name("cv", lr, k)) / HISTORY) for lr, k in cv_pairs(spec)],
                         ignore_index=True)
        atomic.write_csv(spec.dir / CV_HISTORY, hist)
        metric = spec.task.selection_metric(spec.profile.selection_metric)
        sel = select(hist, metric, spec.lrs, len(spec.exp.folds), lower_is_better=not higher_is_better(metric))
        if spec.exp.slice_ranges:
            sel["decoding"] = self._tuned_decoding(sel)
        atomic.write_json(spec.dir / SELECTION, sel)
        return sel

    def foldinit(self, fold: int) -> None:
        """Depth 0: the model of one fold at the selected LR and epochs, whose head a depth-1 fold starts from."""
        spec = self.spec
        plan = foldinit_plan(spec, fold, self.selected())
        d = spec.job_dir(plan.job)
        clock = JobClock()
        run_fit(spec, self.network(), self.fit_inputs(), self.trainer(), plan)
        atomic.write_json(d / JOB_JSON, clock.record())
        save_head(d, self.network().model)
        atomic.write_text(d / DONE, "")

    def final(self, start: Head | None = None) -> None:
        """The fit on the whole training pool at the selection (`start`: at depth 1 the depth-0 final head),
        exported as model/."""
        spec = self.spec
        d = spec.job_dir("final")
        sel = self.selected()
        plan = final_plan(spec, sel, start)
        clock = JobClock()
        hist, diverged = run_fit(spec, self.network(), self.fit_inputs(), self.trainer(), plan)
        if diverged:
            raise RuntimeError(f"{spec.name}: the final fit diverged at LR {sel['lr']}")
        atomic.write_csv(d / HISTORY, hist)
        atomic.write_json(d / JOB_JSON, clock.record())
        model = self.network().model
        export_model(model_dir(spec.dir), model, spec, self.decoding())
        if spec.backbone.pretrained:
            save_head(d, model)
        atomic.write_text(d / DONE, "")

    def test(self) -> dict[str, Any]:
        """The exported final model on the held-out slices: test_predictions.csv, test_metrics.json, then the
        run's timing.json and DONE marker."""
        spec, exp = self.spec, self.spec.exp
        net = self.network()
        net.model.set_weights(keras.models.load_model(model_dir(spec.dir) / MODEL_FILE, compile=False).get_weights())
        clock = JobClock()
        ds, rows = exp.test_set()
        if len(rows) == 0:
            raise BenchmarkInputError("no test rows: give --test-fraction, --test-data or a manifest split column")
        # features cached at reduced precision trained and selected the model; its test is the exported float32
        # model on the images, as `predict` runs it
        exact = not spec.backbone.pretrained or spec.feature_pass().precision == "float32"
        output = test_outputs(spec, net.model, ds, rows, self.fit_inputs() if ds is exp.ds and exact else None,
                              self.selected()["lr"])
        decoding = self.decoding()
        predictions, metrics = evaluate(ds, rows, output, spec.task, decoding,
                                        None if decoding is None else exp.baselines)
        write_test(spec.dir, predictions, metrics)
        outputs = self._fold_outputs(self.selected()) if decoding is not None else None
        if outputs is not None:
            out_of_fold(exp, outputs, spec.dir)
        atomic.write_json(spec.job_dir("test") / JOB_JSON, clock.record())
        atomic.write_json(spec.dir / TIMING, job_seconds(spec.dir))
        atomic.write_text(spec.dir / DONE, "")
        return metrics

    # ---- what the selection job wrote -----------------------------------------------------------------------------
    def selected(self) -> dict[str, Any]:
        return atomic.read_json(self.spec.dir / SELECTION)

    def decoding(self) -> Decoding | None:
        """How this run's class probabilities become IN ranges (selection.json; plain monotone where an older
        selection recorded none); None without slice ranges."""
        if not self.spec.exp.slice_ranges:
            return None
        return Decoding.from_dict(self.selected().get("decoding", Decoding().to_dict()))

    def _fold_outputs(self, sel: dict[str, Any]) -> list[np.ndarray] | None:
        """Each fold's validation outputs at the selected LR and epoch count; None where a CV job of an older
        version kept none."""
        paths = [self.spec.job_dir(job_dir_name("cv", sel["lr"], k)) / VAL_OUTPUT
                 for k in range(len(self.spec.exp.folds))]
        if not all(p.is_file() for p in paths):
            return None
        return [np.load(p)[sel["epochs"] - 1].astype(np.float64) for p in paths]

    def _tuned_decoding(self, sel: dict[str, Any]) -> dict[str, Any]:
        """The decoding tuned on the out-of-fold validation outputs at the selected LR and epoch count."""
        probas = self._fold_outputs(sel)
        if probas is None:
            return {**Decoding().to_dict(), "tuned_on": f"nothing ({VAL_OUTPUT} of a fold missing)"}
        return decoding_on_folds(self.spec.exp, probas)[1]


def export_model(directory: Path, model: keras.Model, spec: RunSpec, decoding: Decoding | None) -> None:
    """A self-contained model directory: the Keras model plus everything `predict` needs to use it."""
    atomic.atomic_write(directory / MODEL_FILE, model.save)
    atomic.write_json(directory / MODEL_JSON, {
        "results_format": RESULTS_FORMAT, "backbone": spec.backbone.key, "depth": spec.depth,
        "classes": list(spec.classes), **spec.task.describe(), "outputs": output_columns(spec.task),
        "preprocessing": spec.prep.key(), "code_version": code_version(), "keras": keras.__version__,
        **({"decoding": decoding.to_dict()} if decoding is not None else {})})


def output_columns(task: Task) -> list[str]:
    """What each column of a model's output is (the target in its own units, see models.head)."""
    return ([f"p_{c}" for c in task.classes] if task.has_classes else []) + \
        ([task.target] if task.has_target else [])


def decoding_on_folds(exp: Experiment, fold_outputs: list[np.ndarray]) -> tuple[Decoding, dict[str, Any]]:
    """The decoding tuned (decode.tune_decoding) on out-of-fold validation outputs, one array per fold of
    `exp.folds` with its validation rows in fold order."""
    pool = exp.oof_rows[0]
    return tune_decoding(np.concatenate(fold_outputs), exp.ds.rows.y.to_numpy()[pool], exp.ds.stacks(pool))


def out_of_fold(exp: Experiment, fold_outputs: list[np.ndarray], directory: Path) -> dict[str, Any]:
    """oof_predictions.csv and oof_metrics.json in a run's `directory` (evaluate.write_out_of_fold) from its
    out-of-fold validation outputs (one array per fold of `exp.folds`, its validation rows in fold order, class
    probabilities first), decoded cross-fitted (each fold as tuned on the others) beside the baselines on the same
    training stacks; returns the metrics. What every slice-range run kind calls once its CV is done."""
    rows, fold = exp.oof_rows
    proba = np.concatenate(fold_outputs)[:, :len(exp.ds.classes)].astype(np.float64)
    proba /= proba.sum(axis=1, keepdims=True)  # kept as float16 (val_output.npy): sums off 1 by up to ~1e-3
    decoding = cross_fitted_decoding(proba, exp.ds.rows.y.to_numpy()[rows], exp.ds.stacks(rows), fold)
    return write_out_of_fold(directory, exp.ds, rows, proba, decoding, exp.oof_baselines)


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

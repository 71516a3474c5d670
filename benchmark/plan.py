"""The planner: how long a grid will take on this machine, predicted from short timed slices of each job kind.

    python -m benchmark.perf --plan --profile paper --data DIR [--backbone all] [--depth both] [--workers N]

For every model of the grid it counts, from the data and the profile alone, what the run will do (bank views of
the feature pass, training slots and validation rows of every fold, the training pool, the test rows), then times
on this machine, with random inputs of the real shapes (timing does not depend on the values):

    feature pass   one batch of the frozen prefix at the feature pass's precision and batch size, after its first
                   (compiling) call; image making of one batch of real slices on the prefetch threads
    fit steps      two compiled epochs of the trainable part on in-memory tensors (the cached path), after the
                   first (tracing, and XLA where the run uses it); the validation forward per row

    predicted phase seconds = counts x measured rates (+ one compile per phase), summed per model and for the grid

The threaded depth-0 CV sweep counts as its machine time divided by the threads it runs at once (at most the
cores). A depth-1 grid's depth-0 fold models (foldinit) are counted at the profile's full epoch count, an upper
bound: they are refitted at the selected one. The stack-context models and the report are not predicted.
With --workers N models run side by side: the prediction is bounded below by machine time / min(N, cores) and
above by the machine time (networks that already use every core gain nothing from a second worker).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from .cache import CachedInputs, output_shapes, plain_views, split_model
from .cpus import usable_cpus
from .data import Slots, prefetched
from .fits import build_network, new_trainer
from .infer import in_precision, inference
from .preprocess import Preprocessing
from .registry import BackboneSpec
from .run_spec import RunSpec
from .train import FitSettings

TIMED_EPOCH_STEPS = 8   # training steps per timed epoch
PHASES = ("feature_pass_s", "cv_s", "foldinit_s", "final_s", "test_s")


@dataclass(frozen=True)
class Workload:
    """What one model run does, counted from the data and the profile."""

    views: int                  # bank views the feature pass computes (test views included)
    fold_slots: tuple[int, ...]  # training slots of each CV fold
    fold_val: tuple[int, ...]    # validation rows of each CV fold
    pool_slots: int             # training slots of the final fit
    test_rows: int
    n_lrs: int
    epochs: int
    batch_size: int
    cv_threads: int             # CV fits at once (the threaded depth-0 sweep)


@dataclass(frozen=True)
class Rates:
    """Measured on this machine for one model."""

    feature_img_s: float   # frozen prefix forward (0 for a CBR net: it caches preprocessed images)
    make_img_s: float      # image making on the prefetch threads
    feature_compile_s: float
    step_s: float          # one training step of the trainable part, batch_size slots
    predict_row_s: float   # validation forward of one row
    fit_compile_s: float   # the first epoch and validation beyond their steady cost (paid once per Trainer)


def workload(exp, spec: BackboneSpec, depth: int) -> Workload:
    """The counts of one model under an Experiment (the same ones its ModelRun would use)."""
    p = exp.profile.for_backbone(spec)
    slots = tuple(len(Slots.build(exp.ds, tr, exp.factors)) for tr, _ in exp.folds)
    threaded = spec.pretrained and depth == 0 and exp.use_cache
    threads = p.cv_threads or min(4, usable_cpus() + 1)
    return Workload(views=len(exp.cache_views(p.bank_views)), fold_slots=slots,
                    fold_val=tuple(len(va) for _, va in exp.folds),
                    pool_slots=len(Slots.build(exp.ds, exp.pool, exp.factors)), test_rows=len(exp.test_set()[1]),
                    n_lrs=len(p.lrs(depth, spec.pretrained, exp.task.has_target)), epochs=p.epochs,
                    batch_size=p.batch_size, cv_threads=threads if threaded else 1)


def measure(exp, spec: BackboneSpec, depth: int) -> Rates:
    """Time the slices of one model's jobs (see the module docstring), on the network, inputs and Trainer its
    ModelRun would build."""
    run_spec = RunSpec.of(exp, spec, depth)
    p, prep, task = run_spec.profile, run_spec.prep, run_spec.task
    size = prep.input_size
    net = build_network(run_spec)
    prefix, trainable = split_model(net.model, net.start) if spec.pretrained else (None, net.model)
    run = run_spec.feature_pass()
    rng = np.random.default_rng(0)
    make_rate = _make_rate(exp.ds, prep, run.batch_size)
    feature_rate, feature_compile = math.inf, 0.0
    if prefix is not None:
        forward = inference(in_precision(prefix, run.precision))
        batch = rng.normal(size=(run.batch_size, size, size, 3)).astype(np.float32)
        first = _timed(lambda: np.asarray(forward(batch)))
        steady = _timed(lambda: np.asarray(forward(batch)))
        feature_rate, feature_compile = run.batch_size / steady, max(0.0, first - steady)
    n = p.batch_size * TIMED_EPOCH_STEPS
    arrays = [rng.normal(size=(n, *shape)).astype(np.float32) for shape in output_shapes(prefix, prep)]
    inputs = CachedInputs(arrays, plain_views(np.arange(n)), augment=False)
    trainer = new_trainer(run_spec, trainable)
    trainer.reset(FitSettings(lr=1e-4, epochs=1, seed=0, draws=None))
    slots = Slots(np.arange(n), np.zeros(n, np.int64))
    targets = task.targets(exp.ds.rows.iloc[np.arange(n) % len(exp.ds.rows)].reset_index(drop=True))
    evaluate = trainer.evaluator(inputs, np.arange(n))
    first = _timed(lambda: trainer.run_epoch(inputs, slots, targets, 0)) + _timed(evaluate)
    epoch = min(_timed(lambda: trainer.run_epoch(inputs, slots, targets, e)) for e in (1, 2))
    val = min(_timed(evaluate) for _ in range(2))
    return Rates(feature_img_s=feature_rate if math.isfinite(feature_rate) else 0.0, make_img_s=make_rate,
                 feature_compile_s=feature_compile, step_s=epoch / TIMED_EPOCH_STEPS, predict_row_s=val / n,
                 fit_compile_s=max(0.0, first - epoch - val))


def predict_seconds(w: Workload, r: Rates, *, depth: int, pretrained: bool, with_depth1: bool) -> dict[str, float]:
    """Predicted seconds of each timed phase (layout.TIMED_PHASES) of one model run, as its timing.json sums
    them, plus `wall_s` (the threaded CV sweep at its wall time) and `machine_s`."""
    # image making runs on the prefetch threads while the network runs: the slower of the two sets the pace
    feature = r.feature_compile_s + w.views * max(1 / r.make_img_s, 1 / r.feature_img_s if r.feature_img_s else 0.0)

    def fit(slots: int, val_rows: int) -> float:
        return w.epochs * (math.ceil(slots / w.batch_size) * r.step_s + val_rows * r.predict_row_s)

    fits = [fit(s, v) for s, v in zip(w.fold_slots, w.fold_val)]
    cv = w.n_lrs * sum(fits) + r.fit_compile_s
    foldinit = sum(fit(s, 0) for s in w.fold_slots) if pretrained and depth == 0 and with_depth1 else 0.0
    final = fit(w.pool_slots, 0)  # the run's Trainer, compiled by its CV fits
    test = w.test_rows * r.predict_row_s
    phases = {"feature_pass_s": feature, "cv_s": cv, "foldinit_s": foldinit, "final_s": final, "test_s": test}
    machine = sum(phases.values())
    threads = min(w.cv_threads, usable_cpus())
    return {**phases, "machine_s": machine, "wall_s": machine - cv + cv / threads}


def plan_grid(exp, pairs: list[tuple[str, int]], progress=None) -> list[dict]:
    """One row per model of `pairs`: its counts, measured rates and predicted phase seconds."""
    from .layout import run_name
    from .registry import get_spec
    with_depth1 = {k for k, d in pairs if d == 1}
    rows = []
    for key, depth in pairs:
        spec = get_spec(key)
        t0 = time.perf_counter()
        w, r = workload(exp, spec, depth), measure(exp, spec, depth)
        seconds = predict_seconds(w, r, depth=depth, pretrained=spec.pretrained, with_depth1=key in with_depth1)
        rows.append({"run": run_name(key, depth), **seconds, "measured_in_s": time.perf_counter() - t0,
                     "workload": asdict(w), "rates": asdict(r)})
        if progress:
            progress(rows[-1])
    return rows


def grid_wall(rows: list[dict], workers: int) -> tuple[float, float]:
    """(lower, upper) bound of the grid's wall seconds with `workers` models side by side."""
    total = sum(r["wall_s"] for r in rows)
    return total / min(max(1, workers), usable_cpus()), total


def _make_rate(ds, prep: Preprocessing, batch: int) -> float:
    rows = np.arange(min(len(ds.rows), 2 * batch))
    made = _timed(lambda: list(prefetched(len(rows), batch, lambda sl: ds.make_inputs(rows[sl], prep))))
    return len(rows) / made


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

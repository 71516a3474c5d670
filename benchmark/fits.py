"""The fits of one model run, each from an explicit plan: the run's network and training inputs (built once, returned
as values), the initial weights of a fit, the fit itself (train.fit), and the head a depth-0 fit hands on to depth 1.

Training reads either cached tensors of the frozen part (cache.py) or images through the whole network (the
per-epoch path, `use_cache=False`); both run the same `train.fit`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import pandas as pd

from data_prep import atomic
from .cache import (CachedInputs, bytes_per_view, cache_key, cached_outputs, depth0_start, split_model,
                    weights_fingerprint)
from .cpus import usable_cpus
from .data import ImageInputs, Slots
from .layout import HEAD, job_dir_name
from .log import get as get_log
from .models import build_model, head, head_layers, set_depth
from .registry import HEAD_DENSE, BackboneSpec
from .run_spec import RunSpec
from .task import Task
from .train import FitSettings, Inputs, Trainer, fit

if TYPE_CHECKING:
    from .protocol import Experiment

# ~0.5 s of head training on a 2-core CPU (0.5 ms a step), about what tracing a Trainer's functions costs
MIN_THREADED_FIT_STEPS = 1000
N_HEAD_ARRAYS = 2  # kernel and bias of each head Dense layer

Head = dict[str, list[np.ndarray]]  # a head's weights by layer name (models.head_layers)


# ---- the network and what its fits read ----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Network:
    """A run's model, frozen for its depth: layers from `start` on train, and every fit resets them to `initial`."""

    model: keras.Model
    start: int
    initial: dict[str, list[np.ndarray]]


def build_network(spec: RunSpec) -> Network:
    keras.utils.set_random_seed(spec.seed("build"))
    model = build_model(spec.backbone, spec.prep.input_size, len(spec.classes), weights=spec.weights_path,
                        dropout=spec.profile.dropout, seed=spec.seed("head"), **spec.task.head_kwargs())
    set_depth(model, spec.backbone, spec.depth)
    if spec.depth == 0 and spec.backbone.pretrained:
        start = depth0_start(model)
    else:
        start = next(i for i, layer in enumerate(model.layers) if layer.trainable and layer.weights)
    return Network(model, start, {layer.name: layer.get_weights() for layer in model.layers[start:]})


@dataclass(frozen=True, eq=False)
class FitInputs:
    """What a run's fits read: the part that trains, where its inputs come from, views per slot to draw from (None:
    a fresh draw per epoch), the targets of every dataset row, and what the cache cost ({} without one)."""

    trainable: keras.Model
    source: Inputs
    draws: int | None
    targets: np.ndarray
    cache_cost: dict[str, Any]


def build_inputs(spec: RunSpec, net: Network) -> FitInputs:
    """The cached path's inputs where the run uses the cache and it fits the budget, else images every epoch."""
    exp = spec.exp
    targets = spec.task.targets(exp.ds.rows)
    cached = _cached_inputs(spec, net, targets) if exp.use_cache else None
    return cached or FitInputs(net.model, ImageInputs(exp.ds, spec.prep, exp.seed, exp.augmentation), None, targets,
                               {})


def _cached_inputs(spec: RunSpec, net: Network, targets: np.ndarray) -> FitInputs | None:
    """Cache what does not train: the frozen prefix's outputs, or for CBR nets (all trainable) the preprocessed
    input views themselves, which still saves the per-image preprocessing of every epoch."""
    exp, p, model = spec.exp, spec.profile, net.model
    if spec.backbone.pretrained:
        prefix, trainable = split_model(model, net.start)
    else:
        prefix, trainable = None, model
    per_view = bytes_per_view(prefix, p.cache_dtype, spec.prep)
    views = exp.cache_views(p.bank_views)
    need = per_view * len(views) * 3  # on disk, plus the float32 copy training reads from memory
    if need > p.cache_budget_gb * 2**30:
        get_log("protocol").warning(f"{spec.name}: cache would need {need / 2**30:.1f} GiB (> cache_budget_gb "
                                    f"{p.cache_budget_gb}); using the per-epoch path")
        return None
    run = spec.feature_pass()
    key = cache_key(backbone=spec.backbone.key, weights=weights_fingerprint(spec.weights_path),
                    prep=spec.prep.key(), data=exp.ds.content_sha256, views=views.digest(),
                    start=model.layers[net.start].name if prefix is not None else "input", seed=exp.seed,
                    rotation=p.rotation_deg, dtype=p.cache_dtype, precision=run.precision,
                    keras=keras.__version__,
                    **({"intensity": p.intensity_gamma} if p.intensity_gamma else {}))
    t0 = time.perf_counter()
    arrays = cached_outputs(prefix, exp.ds, spec.prep, views, cache_dir=exp.cache_dir, key=key, seed=exp.seed,
                            augmentation=exp.augmentation, run=run, dtype=p.cache_dtype,
                            describe={"backbone": spec.backbone.key, "run": spec.name, "bytes_per_view": per_view})
    cost = {"feature_pass_s": time.perf_counter() - t0, "cache_bytes_per_view": per_view,
            "feature_pass": {"precision": run.precision, "batch_size": run.batch_size}}
    return FitInputs(trainable, CachedInputs(arrays, views, exp.augment), p.bank_views if exp.augment else 1,
                     targets, cost)


def new_trainer(spec: RunSpec, trainable: keras.Model) -> Trainer:
    p = spec.profile
    xla = spec.backbone.depth1_xla if p.jit_compile_depth1 is None else p.jit_compile_depth1
    return Trainer(trainable, batch_size=p.batch_size, momentum=p.momentum, decay_rate=p.decay_rate,
                   task=spec.task, jit_compile=xla and spec.depth == 1 and spec.backbone.pretrained)


# ---- fit plans ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class FitPlan:
    """One fit: the job it is (its folder name seeds the head it starts from), its training rows, LR, epochs, data
    seed, validation rows, and at depth 1 the depth-0 head it starts from."""

    job: str
    rows: np.ndarray
    lr: float
    epochs: int
    data_seed: int
    val_rows: np.ndarray | None = None
    start: Head | None = None


def _data_seed(spec: RunSpec, job: str, fold: int | None) -> int:
    # the fold, not the LR, seeds the data: every LR of a fold and the fold's model see the same batches
    return spec.seed(job if fold is None else f"fold{fold}", "data")


def _checked(spec: RunSpec, start: Head | None) -> Head | None:
    if (spec.depth == 1) != (start is not None):
        raise ValueError(f"{spec.name}: a depth-1 fit starts from a depth-0 head, no other fit does")
    return start


def cv_plan(spec: RunSpec, lr: float, fold: int, start: Head | None = None) -> FitPlan:
    job = job_dir_name("cv", lr, fold)
    tr, va = spec.exp.folds[fold]
    return FitPlan(job, tr, lr, spec.profile.epochs, _data_seed(spec, job, fold), va, _checked(spec, start))


def foldinit_plan(spec: RunSpec, fold: int, selection: dict[str, Any]) -> FitPlan:
    """Depth 0: the fold's model at the selected LR and epoch count, for the depth-1 fits of that fold."""
    job = job_dir_name("foldinit", fold=fold)
    return FitPlan(job, spec.exp.folds[fold][0], selection["lr"], selection["epochs"], _data_seed(spec, job, fold))


def final_plan(spec: RunSpec, selection: dict[str, Any], start: Head | None = None) -> FitPlan:
    return FitPlan("final", spec.exp.pool, selection["lr"], selection["epochs"], _data_seed(spec, "final", None),
                   start=_checked(spec, start))


def cv_pairs(spec: RunSpec) -> list[tuple[float, int]]:
    return [(lr, k) for lr in spec.lrs for k in range(len(spec.exp.folds))]


# ---- one fit --------------------------------------------------------------------------------------------------------
def run_fit(spec: RunSpec, net: Network, inputs: FitInputs, trainer: Trainer, plan: FitPlan,
            outputs: list | None = None) -> tuple[pd.DataFrame, bool]:
    """Train `trainer.model` (the run's trainable part, or a copy of it) in place from the plan's start:
    (history, diverged); `outputs` receives each epoch's validation outputs."""
    _reset_weights(spec, net, trainer.model, plan)
    slots = Slots.build(spec.exp.ds, plan.rows, spec.exp.factors)
    s = FitSettings(lr=plan.lr, epochs=plan.epochs, draws=inputs.draws, seed=plan.data_seed)
    return fit(trainer, inputs.source, slots, inputs.targets, s, spec.task, val_rows=plan.val_rows,
               desc=f"{spec.name} {plan.job}", outputs=outputs)


def _reset_weights(spec: RunSpec, net: Network, target: keras.Model, plan: FitPlan) -> None:
    """The trainable part at the start of a fit: initial (ImageNet) block weights and the plan's head (depth 0: one
    seeded by the job; depth 1: the depth-0 head it starts from); a CBR net is rebuilt whole from the job's seed."""
    if not spec.backbone.pretrained:
        keras.utils.set_random_seed(spec.seed(plan.job))
        fresh = build_model(spec.backbone, spec.prep.input_size, len(spec.classes), dropout=spec.profile.dropout,
                            seed=spec.seed(plan.job, "head"), **spec.task.head_kwargs())
        target.set_weights(fresh.get_weights())
        return
    for name, weights in net.initial.items():
        target.get_layer(name).set_weights(weights)
    start = plan.start if spec.depth == 1 else _seeded_head(net.model, spec.task, spec.profile.dropout,
                                                            spec.seed(plan.job))
    for name, w in start.items():
        target.get_layer(name).set_weights(w)


def _seeded_head(model: keras.Model, task: Task, dropout: float, seed: int) -> Head:
    """Initial head weights for a seed, built on a throwaway input of the pooled width."""
    pooled = keras.Input((model.get_layer(HEAD_DENSE).input.shape[-1],))
    fresh = keras.Model(pooled, head(pooled, len(task.classes), dropout=dropout, seed=seed, **task.head_kwargs()))
    return {n: fresh.get_layer(n).get_weights() for n in head_layers(fresh)}


def parallel_fits(exp: Experiment, backbone: BackboneSpec, depth: int, fit_threads: bool) -> int:
    """How many CV fits of a run one job runs at once (`fit_threads`: whether its executor lets a job use threads).

    A cached depth-0 run's fits train only the head, a step so small that TensorFlow runs it on one core, and each
    fit also waits on Python between epochs; so where the executor allows threads they run `profile.cv_threads` at
    a time, by default one more than the cores, at most 4. The paper profile's 15 depth-0 fits on ACDC took 20.5 s
    one at a time, 14.5 s two at a time, 11.9 s three at a time and 13.1 s four at a time on a 2-core CPU. Each
    extra thread's Trainer costs ~0.5 s of tracing, so by default short fits (under MIN_THREADED_FIT_STEPS training
    steps) run one at a time. Other runs' fits keep the cores busy on their own: one at a time."""
    if not (fit_threads and backbone.pretrained and depth == 0 and exp.use_cache):
        return 1
    profile = exp.profile.for_backbone(backbone)
    if profile.cv_threads:
        return profile.cv_threads
    slots = len(Slots.build(exp.ds, exp.folds[0][0], exp.factors))  # fold 0's fit stands for all
    if profile.epochs * math.ceil(slots / profile.batch_size) < MIN_THREADED_FIT_STEPS:
        return 1
    return min(4, usable_cpus() + 1)


# ---- the head a depth-0 fit hands on --------------------------------------------------------------------------------
def save_head(directory: Path, model: keras.Model) -> None:
    arrays = {f"{n}/{i}": w for n in head_layers(model) for i, w in enumerate(model.get_layer(n).get_weights())}
    atomic.atomic_write(directory / HEAD, lambda p: np.savez(p, **arrays))


def load_head(directory: Path) -> Head:
    with np.load(directory / HEAD) as z:
        return {n: [z[f"{n}/{i}"] for i in range(N_HEAD_ARRAYS)] for n in {k.split("/")[0] for k in z.files}}

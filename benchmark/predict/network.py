"""The trained network on every slice of a study: its inputs, class probabilities and Grad-CAMs, the stack model
where the run has one, and the run's decoding into labels.

Grad-CAM (Selvaraju et al. 2017) is benchmark.gradcam.gradcam_tape on the registry's CAM layer
(models.cam_layer_name), for the argmax class of each slice: the gradient of that class's pre-softmax logit
with respect to the feature map, averaged over space, weights the map's channels; ReLU, zoomed to the input size,
scaled to [0, 1] per slice.
"""
from __future__ import annotations

import sys
import time

import numpy as np
from tqdm import tqdm

from ..data import Dataset
from ..preprocess import Preprocessing, crop_resize, window
from ..seg_features import describe, stack_features
from .decide import StackPrediction, split_stacks
from .draw import DISPLAY_PX
from .load import TrainedModel

BATCH = 64


def predict_batch(trained: TrainedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per-slice class probabilities, pooled features (stack models) and the Grad-CAM of each image's per-slice
    argmax class (input resolution, [0, 1]); for a segmentation run, no probabilities yet (its range model reads
    the whole stack), the probability maps as features and the predicted label maps in place of Grad-CAMs."""
    if trained.segments:
        maps = np.asarray(trained.model(x, training=False))
        return np.zeros((len(x), len(trained.classes))), maps, maps.argmax(-1)
    from ..gradcam import gradcam_tape
    proba, features = trained.probabilities(x)
    return proba, features, gradcam_tape(trained.model, x, proba.argmax(axis=1), trained.cam_layer)


def field_of_view(ds: Dataset, i: int, prep: Preprocessing) -> np.ndarray:
    """What the network sees of row i, for the reports: the windowed centre crop of the slice itself, in [0, 1]."""
    return crop_resize(window(ds.native(i), prep.window), prep.crop_fraction, DISPLAY_PX) / 255.0


def network_outputs(trained: TrainedModel, ds: Dataset, timing: dict[str, float]
                    ) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray], list[np.ndarray]]:
    """Per-slice probabilities, pooled features (stack models) or slice features (segmentation runs), fields of view
    and Grad-CAMs (or predicted label maps) of every row."""
    n = len(ds.rows)
    proba = np.zeros((n, len(trained.classes)), dtype=np.float64)
    features: list[np.ndarray] = []
    views: list[np.ndarray] = []
    cams: list[np.ndarray] = []
    timing["inputs_s"] = timing["predict_cam_s"] = 0.0
    for start in tqdm(range(0, n, BATCH), desc="predicting", unit="batch", disable=None, file=sys.stderr):
        idx = range(start, min(start + BATCH, n))
        t0 = time.perf_counter()
        x = ds.make_inputs(idx, trained.prep)
        views += [field_of_view(ds, i, trained.prep) for i in idx]
        t1 = time.perf_counter()
        p, f, c = predict_batch(trained, x)
        timing["inputs_s"] += t1 - t0
        timing["predict_cam_s"] += time.perf_counter() - t1
        proba[start:start + len(idx)] = p
        if f is not None:
            features.append(describe(ds, np.asarray(idx), f, trained.prep) if trained.segments else f)
        cams += list(c)
    return proba, np.concatenate(features) if features else None, views, cams


def decided_labels(trained: TrainedModel, ds: Dataset, proba: np.ndarray,
                   features: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities, labels) of every row. A stack model relabels every slice from its whole stack's features;
    the run's decoding then makes each stack's labels."""
    if trained.stack is not None:
        from ..stack import predict_stacks
        every = np.arange(len(proba))
        proba = predict_stacks(trained.stack, ds, every, features, every, len(trained.classes))
    if trained.segments:
        proba = trained.range_model.predict_proba(stack_features(features, ds.rows))
    return proba, trained.decoding.apply(proba, ds.rows)


def predict_study(trained: TrainedModel, ds: Dataset, kind: str, timing: dict[str, float]) -> list[StackPrediction]:
    """Probabilities, monotone labels and Grad-CAMs of every slice of every stack."""
    proba, features, views, cams = network_outputs(trained, ds, timing)
    t0 = time.perf_counter()
    proba, monotone = decided_labels(trained, ds, proba, features)
    timing["decode_s"] = time.perf_counter() - t0
    return split_stacks(ds.rows, kind, proba, monotone, views, cams)

"""Running a network forward: one compiled function per model, and how the feature pass uses this machine's device.

Only inference lives here, and it runs on any Keras backend: the feature pass (cache.py) and `predict` need nothing
TensorFlow-specific, so they can be measured where only another backend is installed (e.g. Keras on JAX on a GPU
machine without TensorFlow; figures in docs/performance.md, "Feature pass on a GPU"). Training (train.py) needs
TensorFlow.

On a GPU the frozen part of a network runs under a mixed-precision dtype policy and on larger batches
(`FEATURE_PASS`): its outputs are stored as float16 anyway, and the fits read them in float32. The precision is
part of the cache key, so features computed at one precision are never reused for another.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace

import keras
import numpy as np

from .cpus import has_bf16

PREDICT_BATCH = 64


@dataclass(frozen=True)
class FeaturePass:
    """How the frozen part of a network runs over the cached views."""

    precision: str   # a Keras dtype policy: float32, mixed_float16 or mixed_bfloat16
    batch_size: int  # images per compiled call


# Per device kind. CPU: float32 and 64 images per call; on a CPU with native bfloat16 arithmetic the backbones
# measured faster in it run in mixed_bfloat16 (registry: BackboneSpec.cpu_bf16).
# GPU: from `python -m benchmark.perf --feature-pass` on an H100 at 224 px (docs/performance.md, "Feature pass on a
# GPU"): float16 at 512 per call ran the networks 1.7-3.7x faster than float32 at 64 (MobileNet 4,772 ->
# 7,423-12,318 img/s, VGG16 4,015 -> 7,931, DenseNet121 1,848 -> 6,898); bfloat16 was no faster and moved
# MobileNet's ImageNet features by 11-14 % (relative L2) against float16's 1 %.
FEATURE_PASS: dict[str, FeaturePass] = {
    "cpu": FeaturePass("float32", PREDICT_BATCH),
    "gpu": FeaturePass("mixed_float16", 512),
}

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _tf_has_gpu() -> bool:
    import tensorflow as tf
    return bool(tf.config.list_logical_devices("GPU"))


def _jax_has_gpu() -> bool:
    import jax
    return jax.default_backend() == "gpu"


def _torch_has_gpu() -> bool:
    import torch
    return torch.cuda.is_available()


_GPU_PROBES: dict[str, Callable[[], bool]] = {"tensorflow": _tf_has_gpu, "jax": _jax_has_gpu, "torch": _torch_has_gpu}


def device_kind() -> str:
    """'gpu' where the Keras backend runs on one, else 'cpu'."""
    probe = _GPU_PROBES.get(keras.backend.backend())
    return "gpu" if probe is not None and probe() else "cpu"


def feature_pass(precision: str | None = None, batch_size: int | None = None, *,
                 cpu_bf16: bool = False) -> FeaturePass:
    """This device's default, with the profile's (or a command's) choices where given. `cpu_bf16`: the backbone's
    frozen part runs faster in bfloat16 on a CPU with native bfloat16 arithmetic (registry: BackboneSpec.cpu_bf16,
    chosen by measurement), so there it runs in mixed_bfloat16."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"feature precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"feature batch size must be at least 1, got {batch_size}")
    kind = device_kind()
    base = FEATURE_PASS[kind]
    if kind == "cpu" and cpu_bf16 and has_bf16():
        base = replace(base, precision="mixed_bfloat16")
    return replace(base, **{k: v for k, v in (("precision", precision), ("batch_size", batch_size)) if v is not None})


def in_precision(model: keras.Model, precision: str) -> keras.Model:
    """The model itself at float32, else a copy whose layers compute under `precision` (same weights)."""
    if precision == "float32":
        return model
    copy = keras.models.clone_model(
        model, clone_function=lambda layer: layer.__class__.from_config({**layer.get_config(), "dtype": precision}))
    copy.set_weights(model.get_weights())
    return copy


_INFERENCE: weakref.WeakKeyDictionary[keras.Model, Callable] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False)
class Forward:
    """A model's compiled forward, holding the model: the per-model cache holds neither (a grid builds many
    networks), so a caller may keep this alone, e.g. for a precision copy it made on the fly."""

    model: keras.Model
    compiled: Callable  # built once per model

    def __call__(self, *xs):
        return self.compiled(*xs)


def inference(model: keras.Model) -> Forward:
    """model(x, training=False) in float32 as one compiled function for any batch size, built once per model.

    TensorFlow: one tf.function with an open batch dimension (an eager call costs 7x a compiled one for MobileNet at
    64 px, and predict_on_batch retraces for every new batch size). Other backends: predict_on_batch, with a short
    last batch padded to the first call's size so that it compiles once.
    """
    fn = _INFERENCE.get(model)
    if fn is None:
        ref = weakref.ref(model)  # a cache entry that held its model would keep it alive for ever
        make = _tf_inference if keras.backend.backend() == "tensorflow" else _padded_inference
        fn = _INFERENCE[model] = make(model, ref)
    return Forward(model, fn)


def _tf_inference(model: keras.Model, ref: Callable[[], keras.Model]) -> Callable:
    import tensorflow as tf
    specs = [tf.TensorSpec((None, *t.shape[1:]), t.dtype) for t in model.inputs]
    return tf.function(lambda *xs: _float32(ref()(list(xs) if len(xs) > 1 else xs[0], training=False)),
                       input_signature=specs)


def _padded_inference(model: keras.Model, ref: Callable[[], keras.Model]) -> Callable:
    first_size: dict[str, int] = {}

    def call(*xs):
        n = len(xs[0])
        full = first_size.setdefault("n", n)
        if n < full:
            xs = tuple(np.concatenate([a, np.zeros((full - n, *a.shape[1:]), a.dtype)]) for a in xs)
        out = ref().predict_on_batch(list(xs) if len(xs) > 1 else xs[0])
        return keras.tree.map_structure(lambda t: np.asarray(t, np.float32)[:n], out)
    return call


def _float32(out):
    """A mixed-precision network's outputs (one tensor or a list) in float32."""
    return keras.tree.map_structure(lambda t: keras.ops.cast(t, "float32"), out)


def predict(model: keras.Model, xs: list[np.ndarray], batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Compiled calls in chunks: cheaper than model.predict for the small heads, bounded memory for big nets."""
    fn = inference(model)
    parts = [np.asarray(fn(*[a[i:i + batch_size] for a in xs])) for i in range(0, len(xs[0]), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output.shape[-1]), np.float32)

"""Grad-CAM and SmoothGrad maps of a benchmark model, through tf-keras-vis or a GradientTape of our own.

tf-keras-vis is the reference implementation (it works with Keras 3 on our flat functional models). The tape
versions compute the same maps by the same recipe, so a network on which tf-keras-vis fails still gets a figure:

    Grad-CAM    score = the pre-softmax logit of the target class (the softmax replaced by a linear output, as
                tf-keras-vis' ReplaceToLinear does); weights = spatial mean of d score / d feature map;
                map = ReLU(sum_k weight_k * feature_k), bilinearly zoomed to the input size, scaled to [0, 1]
    SmoothGrad  |d score / d input| averaged over noisy copies of the input (noise SD = `noise` x the input's
                value range, seeded), max over channels, scaled to [0, 1]

Every map is scaled per image as (m - min) / (max - min + keras epsilon), tf-keras-vis' `normalize`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import keras
import numpy as np
from scipy.ndimage import zoom


@dataclass
class Maps:
    """Per-image maps (n, H, W) in [0, 1] and the implementation that made each kind."""

    gradcam: np.ndarray
    saliency: np.ndarray
    gradcam_method: str
    saliency_method: str


def _normalize(maps: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, maps.ndim))
    lo = maps.min(axis=axes, keepdims=True)
    hi = maps.max(axis=axes, keepdims=True)
    return (maps - lo) / (hi - lo + keras.config.epsilon())


def _linear_clone(model: keras.Model) -> keras.Model:
    """A copy of the model whose output layers return logits (the original keeps its softmax)."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for name in clone.output_names:
        clone.get_layer(name).activation = keras.activations.linear
    return clone


def _targets(targets, n: int) -> np.ndarray:
    t = np.broadcast_to(np.asarray(targets, dtype=np.int64), (n,))
    return np.ascontiguousarray(t)


def gradcam_tape(model: keras.Model, images: np.ndarray, targets, layer: str) -> np.ndarray:
    """Grad-CAM of `layer` for each image's target class, by our own GradientTape (see the module docstring)."""
    import tensorflow as tf
    x = tf.constant(np.asarray(images, dtype=np.float32))
    t = _targets(targets, len(x))
    lin = _linear_clone(model)
    probe = keras.Model(lin.inputs, [lin.get_layer(layer).output, lin.outputs[0]])
    with tf.GradientTape() as tape:
        fmap, logits = probe(x, training=False)
        score = tf.gather(logits, t, axis=1, batch_dims=1)
    grads = tape.gradient(score, fmap).numpy()
    fmap = fmap.numpy()
    weights = grads.mean(axis=(1, 2), keepdims=True)
    cam = np.maximum((fmap * weights).sum(axis=-1), 0.0)
    cam = zoom(cam, (1.0, x.shape[1] / cam.shape[1], x.shape[2] / cam.shape[2]), order=1)
    return _normalize(cam)


def smoothgrad_tape(model: keras.Model, images: np.ndarray, targets, samples: int = 20, noise: float = 0.2,
                    seed: int = 0) -> np.ndarray:
    """SmoothGrad saliency of each image's target class by our own GradientTape; samples=0: plain |gradient|.

    The noise is drawn as tf-keras-vis draws it after `np.random.seed(seed)`, so both give the same map.
    """
    import tensorflow as tf
    x = np.asarray(images, dtype=np.float32)
    t = _targets(targets, len(x))
    lin = _linear_clone(model)
    if samples > 0:
        axes = tuple(range(1, x.ndim))
        sigma = noise * (x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True))
        noisy = x + np.random.RandomState(seed).normal(0.0, sigma, (samples,) + x.shape)
    else:
        noisy = x[None]
    total = np.zeros_like(x)
    for batch in noisy:
        batch = tf.constant(batch.astype(np.float32))
        with tf.GradientTape() as tape:
            tape.watch(batch)
            score = tf.gather(lin(batch, training=False), t, axis=1, batch_dims=1)
        total += np.abs(tape.gradient(score, batch).numpy())
    return _normalize((total / len(noisy)).max(axis=-1))


def gradcam_vis(model: keras.Model, images: np.ndarray, targets, layer: str) -> np.ndarray:
    """Grad-CAM by tf-keras-vis on `layer` (the layer is used as named: no search for another conv layer)."""
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore
    x = np.asarray(images, dtype=np.float32)
    cam = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)
    return np.asarray(cam(CategoricalScore(list(_targets(targets, len(x)))), x, penultimate_layer=layer,
                          seek_penultimate_conv_layer=False))


def smoothgrad_vis(model: keras.Model, images: np.ndarray, targets, samples: int = 20, noise: float = 0.2,
                   seed: int = 0) -> np.ndarray:
    """SmoothGrad by tf-keras-vis. It draws its noise from numpy's global generator: seeded here, then restored."""
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore
    x = np.asarray(images, dtype=np.float32)
    sal = Saliency(model, model_modifier=ReplaceToLinear(), clone=True)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return np.asarray(sal(CategoricalScore(list(_targets(targets, len(x)))), x, smooth_samples=samples,
                              smooth_noise=noise))
    finally:
        np.random.set_state(state)


def explain(model: keras.Model, images: np.ndarray, targets, layer: str, *, samples: int = 20,
            noise: float = 0.2, seed: int = 0) -> Maps:
    """Grad-CAM on `layer` and SmoothGrad for each image's target class; tf-keras-vis first, our tape if it fails."""
    with warnings.catch_warnings():
        # Keras warns that tf-keras-vis passes the input as a list rather than under the input's name; harmless
        warnings.filterwarnings("ignore", message=".*structure of `inputs`.*")
        try:
            cam, cam_method = gradcam_vis(model, images, targets, layer), "tf-keras-vis"
        except Exception as exc:  # any failure inside the third-party tool: the tape does the same computation
            warnings.warn(f"tf-keras-vis Grad-CAM failed ({type(exc).__name__}: {exc}); using the GradientTape "
                          f"implementation", stacklevel=2)
            cam, cam_method = gradcam_tape(model, images, targets, layer), "GradientTape"
        try:
            sal, sal_method = smoothgrad_vis(model, images, targets, samples, noise, seed), "tf-keras-vis"
        except Exception as exc:
            warnings.warn(f"tf-keras-vis SmoothGrad failed ({type(exc).__name__}: {exc}); using the GradientTape "
                          f"implementation", stacklevel=2)
            sal, sal_method = smoothgrad_tape(model, images, targets, samples, noise, seed), "GradientTape"
    return Maps(cam, sal, cam_method, sal_method)

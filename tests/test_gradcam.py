"""Grad-CAM / SmoothGrad (benchmark.gradcam): maps point at the region that decides the class; tf-keras-vis and
our GradientTape implementation agree; the tape takes over when tf-keras-vis fails."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from benchmark import gradcam
from benchmark.registry import POOLED, get_spec
from benchmark.models import build_model, cam_layer_name, head

SIZE, SQUARE = 32, 6


def region_images(n: int, rng: np.random.Generator):
    """Noise with a dim 4x4 distractor outside the top-left quadrant in every image; class 1 adds a bright square
    inside the top-left quadrant. Returns images (n, 32, 32, 3), classes, and the square's box (r0, c0, r1, c1)."""
    x = rng.normal(0.0, 0.15, (n, SIZE, SIZE, 1)).astype(np.float32)
    y = rng.integers(0, 2, n)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        r, c = rng.integers(SIZE // 2, SIZE - 4, 2)
        x[i, r:r + 4, c:c + 4] += 0.6
        if y[i]:
            r, c = rng.integers(0, SIZE // 2 - SQUARE + 1, 2)
            x[i, r:r + SQUARE, c:c + SQUARE] += 1.0
            boxes[i] = r, c, r + SQUARE, c + SQUARE
    return np.repeat(x, 3, axis=-1), y, boxes


@pytest.fixture(scope="module")
def region_model():
    """A tiny flat functional classifier (conv -> pool -> conv "cam" -> "pooled" -> the registry head) trained to
    tell whether the top-left quadrant holds the square."""
    keras.utils.set_random_seed(0)
    x, y, _ = region_images(400, np.random.default_rng(0))
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inputs)
    h = layers.MaxPooling2D(2, name="p1")(h)
    h = layers.Conv2D(8, 3, padding="same", activation="relu", name="cam")(h)
    model = keras.Model(inputs, head(layers.GlobalAveragePooling2D(name=POOLED)(h), 2, dropout=0.0, seed=0))
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def region_test():
    return region_images(60, np.random.default_rng(1))


def test_gradcam_peaks_in_the_deciding_region(region_model, region_test):
    x, y, boxes = region_test
    _, accuracy = region_model.evaluate(x, y, verbose=0)
    assert accuracy >= 0.95, f"the tiny model did not learn the task (accuracy {accuracy:.2f})"
    pos = np.flatnonzero(y == 1)
    maps = gradcam.explain(region_model, x[pos], 1, "cam", samples=5)
    assert maps.gradcam_method == maps.saliency_method == "tf-keras-vis"
    for k, i in enumerate(pos):
        r0, c0, r1, c1 = boxes[i]
        cam, sal = maps.gradcam[k], maps.saliency[k]
        peak_r, peak_c = np.unravel_index(cam.argmax(), cam.shape)
        # 2 px of slack: the CAM layer has half the input's resolution and is zoomed back
        assert r0 - 2 <= peak_r < r1 + 2 and c0 - 2 <= peak_c < c1 + 2, "Grad-CAM peak outside the square"
        for name, m, factor in (("Grad-CAM", cam, 5.0), ("SmoothGrad", sal, 1.5)):
            # SmoothGrad also lights the distractor's edges (the input gradient sees every edge), hence less
            inside = m[r0:r1, c0:c1].mean()
            outside = (m.sum() - m[r0:r1, c0:c1].sum()) / (SIZE * SIZE - SQUARE * SQUARE)
            assert inside > factor * outside, f"{name}: square {inside:.3f} vs rest {outside:.3f}"
    for m in (maps.gradcam, maps.saliency):
        assert m.shape == (len(pos), SIZE, SIZE) and m.min() >= 0 and m.max() <= 1 + 1e-6


def test_tape_agrees_with_tf_keras_vis(region_model, region_test):
    x, _, _ = region_test
    targets = np.arange(8) % 2
    np.testing.assert_allclose(gradcam.gradcam_tape(region_model, x[:8], targets, "cam"),
                               gradcam.gradcam_vis(region_model, x[:8], targets, "cam"), atol=1e-4)
    np.testing.assert_allclose(gradcam.smoothgrad_tape(region_model, x[:8], targets, samples=4, seed=3),
                               gradcam.smoothgrad_vis(region_model, x[:8], targets, samples=4, seed=3), atol=1e-4)
    np.testing.assert_allclose(gradcam.smoothgrad_tape(region_model, x[:8], targets, samples=0),
                               gradcam.smoothgrad_vis(region_model, x[:8], targets, samples=0), atol=1e-4)


def test_tape_agrees_on_a_registry_network():
    spec = get_spec("cbr_tiny")
    model = build_model(spec, 32, 3, seed=1)
    x = np.random.default_rng(2).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32)
    layer = cam_layer_name(model, spec)
    np.testing.assert_allclose(gradcam.gradcam_tape(model, x, [0, 1, 2], layer),
                               gradcam.gradcam_vis(model, x, [0, 1, 2], layer), atol=1e-4)


def test_smoothgrad_is_seeded_and_leaves_numpy_state(region_model, region_test):
    x, _, _ = region_test
    state = np.random.get_state()[1].copy()
    a = gradcam.smoothgrad_vis(region_model, x[:2], 1, samples=3, seed=7)
    b = gradcam.smoothgrad_vis(region_model, x[:2], 1, samples=3, seed=7)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_explain_falls_back_to_the_tape(region_model, region_test, monkeypatch):
    x, _, _ = region_test

    def broken(*args, **kwargs):
        raise TypeError("simulated tf-keras-vis failure")

    monkeypatch.setattr(gradcam, "gradcam_vis", broken)
    monkeypatch.setattr(gradcam, "smoothgrad_vis", broken)
    with pytest.warns(UserWarning, match="simulated tf-keras-vis failure"):
        maps = gradcam.explain(region_model, x[:2], 1, "cam", samples=2)
    assert (maps.gradcam_method, maps.saliency_method) == ("GradientTape", "GradientTape")
    np.testing.assert_allclose(maps.gradcam, gradcam.gradcam_tape(region_model, x[:2], 1, "cam"), atol=1e-6)

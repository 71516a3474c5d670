"""Preprocessing: windowing, crop, rotation before crop, and preprocess_input identical to Keras'."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from benchmark.preprocess import (CROP_FRACTION, Preprocessing, backbone_preprocess, crop_resize, make_input, rotate,
                                  window)

KERAS_PREPROCESS = {
    "tf": keras.applications.mobilenet.preprocess_input,
    "caffe": keras.applications.vgg16.preprocess_input,
    "torch": keras.applications.densenet.preprocess_input,
}


@pytest.mark.parametrize("mode", sorted(KERAS_PREPROCESS))
def test_backbone_preprocess_matches_keras(mode):
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(backbone_preprocess(x, mode), KERAS_PREPROCESS[mode](x.copy()), rtol=1e-5,
                               atol=1e-4)


def test_window_maps_percentiles_to_0_255():
    img = np.arange(101, dtype=np.uint16).reshape(1, 101)  # percentile p of 0..100 is p itself
    out = window(img, (10.0, 90.0))
    assert out[0, 10] == 0 and out[0, 90] == 255
    assert out[0, 50] == pytest.approx(127.5)
    assert out.min() == 0 and out.max() == 255
    assert not window(np.full((4, 4), 7), (1, 99)).any()  # a constant slice does not divide by zero


def test_crop_keeps_the_middle_60_percent():
    img = np.zeros((100, 100), np.float32)
    img[20:80, 20:80] = 1.0  # exactly the middle 60 %
    out = crop_resize(img, 0.6, 30)
    assert out.shape == (30, 30) and out.min() == 1.0


def test_rotation_before_crop_never_shows_padding():
    """The central 60 % crop of a slice rotated by up to 45° only holds pixels within 0.43 side of the centre."""
    n = 101
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    img = np.hypot(yy, xx).astype(np.float32)
    img[img > 0.45 * n] = 1e4  # a sentinel in the corners and anything outside the central disc
    for angle in (0.0, 17.0, 45.0, -45.0):
        out = crop_resize(rotate(img, angle), CROP_FRACTION, 40)
        assert out.max() < 0.45 * n, angle


def test_2p5d_channel_order():
    """Channels are (apex-side, slice, base-side), each preprocessed exactly as a 2D input of that slice."""
    rng = np.random.default_rng(0)
    a, b, c = (rng.integers(0, 4000, size=(24, 24)).astype(np.uint16) for _ in range(3))
    x = make_input([a, b, c], Preprocessing(8, "unit", input_kind="2.5d"))
    for k, img in enumerate((a, b, c)):
        np.testing.assert_array_equal(x[..., k], make_input([img], Preprocessing(8, "unit"))[..., 0])

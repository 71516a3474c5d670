"""Every backbone spec builds, freezes the right layers at depth 0 and 1, and splits into cacheable parts."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from benchmark.cache import depth0_start, split_model
from benchmark.catalog import BACKBONE_KEYS, IMAGENET
from benchmark.registry import BACKBONES, POOLED, WeightsMissing, get_spec, resolve_weights
from benchmark.models import build_model, cam_layer_name, first_unfrozen_index, set_depth
from benchmark.weights import OFFLINE_ENV

# Trainable parameters (3 classes) at depth 0 and depth 1; the smallest legal input (counts do not depend on it).
# Depth 0 is the head alone: F*256 + 256 + 256*3 + 3, e.g. MobileNet α0.25 (F = 256): 65,792 + 771 = 66,563.
# VGG16 depth 1 adds block5: 3 * (3*3*512*512 + 512) = 7,079,424 -> 7,211,523.
# MobileNet depth 1 adds conv_dw_13 (3*3*256) + BN (2*256) + conv_pw_13 (256*256) + BN (2*256) = 68,864 -> 135,427.
EXPECTED = {
    "mobilenet": (32, [66563, 135427]),
    "mobilenetv2": (32, [328707, 535667]),
    "vgg16": (32, [132099, 7211523]),
    "inceptionv3": (75, [525315, 6598851]),
    "resnet50v2": (32, [525315, 4994051]),
    "inceptionresnetv2": (75, [394243, 5625219]),
    "densenet121": (32, [263171, 2423299]),
    "nasnetmobile": (32, [271363, 984163]),
    "xception": (71, [525315, 5274115]),
    "cbr_large_t": (32, [8668707]),
    "cbr_small": (32, [2179619]),
    "cbr_tiny": (32, [4439619]),
}


def n_trainable(model: keras.Model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_registry_has_the_paper_models():
    assert list(BACKBONES) == list(EXPECTED)
    # the Keras-free catalog (--help, `weights`) lists the same backbones, with a file for exactly the pretrained
    assert tuple(BACKBONES) == BACKBONE_KEYS
    assert [k for k, s in BACKBONES.items() if s.pretrained] == list(IMAGENET)
    with pytest.raises(KeyError, match="valid: mobilenet"):
        get_spec("resnet18")


@pytest.mark.parametrize("key", list(EXPECTED))
def test_build_and_freeze(key):
    spec = get_spec(key)
    size, counts = EXPECTED[key]
    model = build_model(spec, size, 3)
    for depth, expected in enumerate(counts):
        set_depth(model, spec, depth)
        assert n_trainable(model) == expected, (key, depth)
    if spec.pretrained:
        set_depth(model, spec, 1)
        start = first_unfrozen_index(model, spec)
        assert not any(layer.trainable and layer.weights for layer in model.layers[:start])
        assert all(layer.trainable for layer in model.layers[start:])
        # the CAM layer is a 4-D feature map of the backbone, not the pooled vector
        assert len(model.get_layer(cam_layer_name(model, spec)).output.shape) == 4


@pytest.mark.slow
@pytest.mark.parametrize("key", ["vgg16", "nasnetmobile"])
def test_split_reproduces_the_model(key):
    """prefix -> suffix equals the whole model; NASNet's last cell reads two earlier tensors."""
    spec = get_spec(key)
    model = build_model(spec, 32, 3)
    set_depth(model, spec, 1)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    for start in (first_unfrozen_index(model, spec), depth0_start(model)):
        prefix, suffix = split_model(model, start)
        np.testing.assert_allclose(suffix.predict(prefix.predict(x, verbose=0), verbose=0),
                                   model.predict(x, verbose=0), atol=1e-5)
    prefix, _ = split_model(model, first_unfrozen_index(model, spec))
    assert len(prefix.outputs) == (2 if key == "nasnetmobile" else 1)


def test_frozen_batchnorm_runs_in_inference_mode():
    """At depth 0 a training step changes neither the backbone's BN statistics nor its output (Keras 3)."""
    spec = get_spec("mobilenet")
    model = build_model(spec, 32, 3)
    set_depth(model, spec, 0)
    bn = model.get_layer("conv_pw_13_bn")
    before = [w.copy() for w in bn.get_weights()]
    pooled = keras.Model(model.input, model.get_layer(POOLED).output)
    x = np.random.default_rng(1).normal(size=(4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(pooled(x, training=True), pooled(x, training=False), atol=1e-6)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    model.train_on_batch(x, np.eye(3)[[0, 1, 2, 0]])
    for a, b in zip(before, bn.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weights_missing_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv(OFFLINE_ENV, "1")  # downloads: tests/test_weights_download.py
    with pytest.raises(WeightsMissing, match="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5") as err:
        resolve_weights(get_spec("vgg16"), "imagenet", 224)
    assert str(tmp_path / "models") in str(err.value)
    assert "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" in str(err.value)
    assert resolve_weights(get_spec("vgg16"), "none", 224) is None
    with pytest.raises(WeightsMissing, match="no/such.h5"):
        resolve_weights(get_spec("vgg16"), "no/such.h5", 224)


@pytest.mark.realdata
def test_real_mobilenet_weights_load(shared_data):
    weights = shared_data.parent / "weights" / "keras" / "models" / "mobilenet_2_5_224_tf_no_top.h5"
    if not weights.is_file():
        pytest.skip(f"{weights} not found")
    model = build_model(get_spec("mobilenet"), 96, 3, weights=str(weights))
    kernel = model.get_layer("conv1").get_weights()[0]
    reference = keras.applications.MobileNet(alpha=0.25, include_top=False, weights=None, input_shape=(96, 96, 3))
    reference.load_weights(str(weights))
    np.testing.assert_array_equal(kernel, reference.get_layer("conv1").get_weights()[0])

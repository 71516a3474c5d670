"""Inference settings: the feature pass's precision and batch size per device, mixed-precision copies, padding."""
from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from benchmark import infer
from benchmark.grid import make_experiment
from benchmark.profiles import get_profile
from benchmark.protocol import ModelRun
from benchmark.registry import get_spec


def small_model() -> keras.Model:
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inp)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inp, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x)))


def test_feature_pass_takes_the_device_default_and_the_profile_overrides(monkeypatch):
    monkeypatch.setattr(infer, "device_kind", lambda: "gpu")
    assert infer.feature_pass() == infer.FEATURE_PASS["gpu"]
    assert infer.feature_pass(batch_size=8) == infer.FeaturePass(infer.FEATURE_PASS["gpu"].precision, 8)
    monkeypatch.setattr(infer, "device_kind", lambda: "cpu")
    assert infer.feature_pass() == infer.FeaturePass("float32", infer.PREDICT_BATCH)
    assert infer.feature_pass("mixed_float16").precision == "mixed_float16"
    with pytest.raises(ValueError, match="'float8' is not one of float32, mixed_float16"):
        infer.feature_pass("float8")
    with pytest.raises(ValueError, match="at least 1, got 0"):
        infer.feature_pass(batch_size=0)


def test_this_cpu_machine_is_seen_as_a_cpu():
    assert infer.device_kind() == "cpu"


def test_a_mixed_precision_copy_computes_in_half_precision_with_the_same_weights():
    model = small_model()
    x = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype("float32")
    assert infer.in_precision(model, "float32") is model
    half = infer.in_precision(model, "mixed_float16")
    assert half is not model
    assert {layer.dtype_policy.name for layer in half.layers[1:]} == {"mixed_float16"}
    assert {layer.dtype_policy.name for layer in model.layers[1:]} == {"float32"}  # the original is untouched
    full, out = np.asarray(model(x, training=False)), infer.inference(half)(x)
    assert out.dtype == np.float32
    assert 0 < np.linalg.norm(out - full) / np.linalg.norm(full) < 1e-2  # rounded, not another network


def test_padded_inference_compiles_one_batch_shape_and_returns_only_the_real_rows(monkeypatch):
    """The path for backends other than TensorFlow: a short last batch is padded to the first call's size."""
    model = small_model()
    shapes = []
    real = model.predict_on_batch
    monkeypatch.setattr(model, "predict_on_batch", lambda x: shapes.append(x.shape) or real(x))
    call = infer._padded_inference(model, lambda: model)
    x = np.random.default_rng(1).normal(size=(11, 8, 8, 3)).astype("float32")
    out = np.concatenate([call(x[:8]), call(x[8:])])
    assert shapes == [(8, 8, 8, 3), (8, 8, 8, 3)]
    np.testing.assert_allclose(out, np.asarray(model(x, training=False)), atol=1e-5)


@pytest.mark.slow
def test_features_at_another_precision_get_their_own_cache(tiny_synthetic, tmp_path):
    """The precision is in the cache key and recorded beside the features; the batch size changes neither.
    (ResNet50V2: its random-init features are not ~0, unlike MobileNet's, so the comparison says something.)"""
    cache = tmp_path / "cache"

    def features(**kw) -> np.ndarray:
        # float32 unless told: on a CPU with bfloat16 the backbone's own default is mixed_bfloat16
        kw = {"feature_precision": "float32", **kw}
        profile = get_profile("quick").with_overrides(n_folds=2, input_sizes={"resnet50v2": 32}, **kw)
        exp = make_experiment(tiny_synthetic, profile, 0, tmp_path / "out", "none", use_cache=True,
                              test_fraction=0.25, cache_dir=cache)
        return ModelRun(exp, get_spec("resnet50v2"), 0).fit_inputs().source.arrays[0]

    full = features()
    assert np.abs(full).mean() > 1e-3
    assert len(list(cache.glob("*/meta.json"))) == 1
    np.testing.assert_array_equal(features(feature_batch=7), full)
    assert len(list(cache.glob("*/meta.json"))) == 1
    half = features(feature_precision="mixed_float16")
    metas = [json.loads(p.read_text()) for p in cache.glob("*/meta.json")]
    assert sorted(m["precision"] for m in metas) == ["float32", "mixed_float16"]
    assert not np.array_equal(half, full)
    assert np.linalg.norm(half - full) / np.linalg.norm(full) < 0.05


@pytest.mark.slow
def test_perf_feature_pass_times_each_setting_and_measures_the_drift(tiny_synthetic, tmp_path):
    from benchmark import perf
    out = tmp_path / "fp.json"
    assert perf.main(["--feature-pass", "--backbone", "resnet50v2", "--data", str(tiny_synthetic), "--input-size",
                      "32", "--weights", "none", "--max-views", "24", "--batches", "16,8", "--precisions",
                      "mixed_float16,float32", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert [(s["precision"], s["batch_size"]) for s in got["settings"]] == [
        ("float32", 8), ("float32", 16), ("mixed_float16", 8), ("mixed_float16", 16)]
    assert all(s["views"] == 24 and s["network_img_s"] > 0 and s["end_to_end_s"] > 0 for s in got["settings"])
    drift = [s["drift_vs_float32"] for s in got["settings"]]
    assert drift[:2] == [0.0, 0.0] and 0 < drift[2] < 0.05 and 0 < drift[3] < 0.05

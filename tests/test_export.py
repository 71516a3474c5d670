"""`python -m benchmark export`: the SavedModel computes what the Keras model computes, and its card states the
preprocessing exactly as model.json records it; so does the ONNX file where tf2onnx and onnxruntime are installed
(they are not project dependencies)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmark.__main__ import main
from benchmark.export import CARD
from benchmark.preprocess import Preprocessing
from benchmark.layout import RESULTS_FORMAT
from benchmark.registry import get_spec
from benchmark.models import build_model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `python -m benchmark` writes it: model/model.keras (untrained MobileNet, 32 px) and
    model/model.json."""
    run = tmp_path_factory.mktemp("results") / "mobilenet_d0"
    (run / "model").mkdir(parents=True)
    prep = Preprocessing(32, "tf", window=(2.0, 98.0))
    model = build_model(get_spec("mobilenet"), 32, 3, seed=4)
    model.save(run / "model" / "model.keras")
    (run / "model" / "model.json").write_text(json.dumps({
        "results_format": RESULTS_FORMAT, "backbone": "mobilenet", "depth": 0, "classes": ["OAP", "IN", "OBS"],
        "outputs": ["p_OAP", "p_IN", "p_OBS"], "preprocessing": prep.key()}))
    return run, model, prep


@pytest.mark.slow
def test_savedmodel_export_matches_keras(run_dir, tmp_path, capsys):
    import tensorflow as tf
    run, model, prep = run_dir
    out = tmp_path / "export"
    assert main(["export", str(run), "--format", "savedmodel", "--out", str(out)]) == 0
    assert "exported:" in capsys.readouterr().out
    x = np.random.default_rng(0).uniform(-1, 1, size=(5, 32, 32, 3)).astype("float32")
    loaded = tf.saved_model.load(str(out / "savedmodel"))  # held: its variables die with it
    exported = loaded.serve(tf.constant(x)).numpy()
    np.testing.assert_allclose(exported, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    card = json.loads((out / CARD).read_text())
    assert json.dumps(card["preprocessing"], sort_keys=True) == prep.key()
    assert card["input"]["shape"] == [None, 32, 32, 3] and card["classes"] == ["OAP", "IN", "OBS"]
    steps = " | ".join(card["preprocessing_steps"])
    assert "2th and 98th" in steps and "to 32 x 32" in steps and "x / 127.5 - 1" in steps


def test_export_refuses_an_existing_out(run_dir, tmp_path, capsys):
    run, _, _ = run_dir
    assert main(["export", str(run), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"benchmark export: error: --out {tmp_path} exists; remove it or give another --out"]


def test_onnx_export_matches_keras(run_dir, tmp_path):
    pytest.importorskip("tf2onnx", reason="ONNX export needs the [onnx] extra (tf2onnx, onnx, onnxruntime)")
    ort = pytest.importorskip("onnxruntime", reason="checking the ONNX file needs onnxruntime")
    run, model, _ = run_dir
    out = tmp_path / "export"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out / "model.onnx"))
    x = np.random.default_rng(1).uniform(-1, 1, size=(5, 32, 32, 3)).astype("float32")
    (exported,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(exported, model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)

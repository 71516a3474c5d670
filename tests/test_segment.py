"""The segmentation head: slice features and Dice by hand, the mask geometry, the decoder's layers and freezing, the
loss's treatment of cavity-only masks, the range model, and one run end to end (resumed, refused without masks)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from benchmark.preprocess import Preprocessing, input_pixel_area, make_input, make_label_map
from benchmark.seg_features import (CAVITY, MYOCARDIUM, STACK_FEATURES, channels_of, dice, dice_by_position,
                                    position_third, ring_completeness, slice_features, stack_features)
from data_prep.manifest import MASK_CODES, Stack, write_dataset

from conftest import cli


def disc(size: int, radius: float, centre=None) -> np.ndarray:
    c = (size - 1) / 2 if centre is None else centre
    yy, xx = np.mgrid[:size, :size]
    return (yy - c) ** 2 + (xx - c) ** 2 <= radius ** 2


def proba_of(label: np.ndarray) -> np.ndarray:
    """A one-hot probability map of a label image of channel indices."""
    return np.eye(3)[label]


def test_mask_codes_map_to_the_heads_channels():
    mask = np.array([[0, MASK_CODES["rv_cavity"], MASK_CODES["lv_myocardium"], MASK_CODES["lv_cavity"]]], np.uint8)
    assert channels_of(mask).tolist() == [[0, 0, MYOCARDIUM, CAVITY]]


def test_ring_completeness_by_hand():
    cavity = disc(41, 8)
    ring = disc(41, 14) & ~disc(41, 9)
    assert ring_completeness(cavity, ring) == 1.0
    half = ring.copy()
    half[:, :20] = False  # keep the right half: 8 of 16 sectors (x > centre), give or take the boundary sectors
    assert 0.4 <= ring_completeness(cavity, half) <= 0.625
    assert ring_completeness(np.zeros_like(cavity), ring) == 0.0
    assert ring_completeness(cavity, np.zeros_like(ring)) == 0.0


def test_slice_features_by_hand():
    label = np.zeros((10, 10), np.int64)
    label[2:5, 2:5] = CAVITY        # 9 px
    label[0, :] = MYOCARDIUM        # 10 px
    f = slice_features(proba_of(label), pixel_mm2=2.0)
    assert f[0] == 18.0 and f[1] == 20.0 and f[2] == 18.0 and f[3] == 1.0


def test_stack_features_share_and_neighbours_by_hand():
    rows = pd.DataFrame({"patient": ["a"] * 3 + ["b"], "frame": ["ED"] * 4, "slice": [0, 1, 2, 0],
                         "n_slices": [3, 3, 3, 1]})
    per_slice = np.zeros((4, 5))
    per_slice[:, 0] = [10.0, 40.0, 20.0, 0.0]
    x = stack_features(per_slice, rows)
    share = x[:, STACK_FEATURES.index("cavity_share")]
    assert share.tolist() == [0.25, 1.0, 0.5, 0.0]
    assert x[:, STACK_FEATURES.index("apex_side_share")].tolist() == [0.0, 0.25, 1.0, 0.0]
    assert x[:, STACK_FEATURES.index("base_side_share")].tolist() == [1.0, 0.5, 0.0, 0.0]
    assert x[0, STACK_FEATURES.index("log_cavity")] == pytest.approx(np.log(11.0))
    assert x.shape == (4, len(STACK_FEATURES))


def test_dice_and_positions_by_hand():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :2] = True
    b[0, 1:3] = True
    assert dice(a, b) == pytest.approx(2 * 1 / 4)
    assert np.isnan(dice(np.zeros_like(a), np.zeros_like(b)))
    rows = pd.DataFrame({"slice": [0, 1, 2, 3, 4, 5, 6, 0], "n_slices": [7] * 7 + [1]})
    assert position_third(rows).tolist() == ["apex", "apex", "apex", "middle", "middle", "base", "base", "middle"]
    by = dice_by_position({"cavity": np.array([1.0, 0.5, np.nan, 0.0, 1.0, 0.25, 0.75, 1.0])}, rows)["cavity"]
    assert by["apex"] == 0.75 and by["n_apex"] == 2
    assert by["middle"] == pytest.approx(2 / 3) and by["n_middle"] == 3
    assert by["base"] == 0.5 and by["n_all"] == 7


def test_a_mask_follows_its_image_through_rotation_crop_and_resize():
    img = np.zeros((60, 80), np.float32)
    mask = np.zeros((60, 80), np.uint8)
    img[20:30, 30:50] = 1000.0
    mask[20:30, 30:50] = MASK_CODES["lv_cavity"]
    prep = Preprocessing(48, "unit")
    for angle in (0.0, 30.0):
        x = make_input([img], prep, angle)[..., 0]
        m = make_label_map(mask, prep, angle)
        assert m.shape == (48, 48) and set(np.unique(m)) <= {0, MASK_CODES["lv_cavity"]}
        bright = x > 0.5
        assert (bright & (m > 0)).sum() / max(1, (bright | (m > 0)).sum()) > 0.8
    # the 60 % crop of 60 x 80 is 36 x 48 native pixels over 48 x 48 input pixels
    assert input_pixel_area((60, 80), prep) == pytest.approx(36 * 48 / 48 ** 2)


def test_decoder_layers_and_freezing():
    import keras

    from benchmark.models import SEG_PREFIX, build_segmenter, set_segment_depth, skip_layers
    from benchmark.registry import get_spec

    spec = get_spec("mobilenet")
    model = build_segmenter(spec, 64, filters=8)
    assert model.output.shape[1:] == (64, 64, 3)
    joined = [model.get_layer(f"{SEG_PREFIX}join{i}").input[1].shape[1] for i in range(4)]
    assert joined == [4, 8, 16, 32]  # deepest skip first
    set_segment_depth(model, spec, 0)
    trained = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert trained and all(n.startswith(SEG_PREFIX) for n in trained)
    set_segment_depth(model, spec, 1)
    trained = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert "conv_dw_13" in trained and "conv_dw_12" not in trained
    # without names in the registry: the last layer at each resolution octave, finest first
    cbr = get_spec("cbr_tiny")
    inputs = keras.Input((64, 64, 3))
    from benchmark.models import _cbr_backbone
    encoder = keras.Model(inputs, _cbr_backbone(cbr, inputs))
    assert skip_layers(encoder, cbr) == ("cbr2_relu", "cbr3_relu", "cbr4_relu")


def test_a_cavity_only_mask_leaves_the_myocardium_out_of_the_loss():
    import tensorflow as tf

    from benchmark.segment import segmentation_loss

    target = np.zeros((1, 8, 8), np.uint8)
    target[0, 2:6, 2:6] = CAVITY
    ring = np.zeros((8, 8), bool)
    ring[1, 1:7] = True
    as_background = proba_of(target[0]) * 0.9 + 0.1 / 3
    as_myocardium = as_background.copy()
    as_myocardium[ring] = [0.1 / 3, 0.9, 0.1 / 3]  # background and cavity probabilities as before at the cavity
    # ... and the same cavity probability everywhere: the cavity-only loss sees no difference
    as_myocardium[ring, CAVITY] = as_background[ring, CAVITY]
    as_myocardium[ring, 0] = 1 - as_myocardium[ring, 1] - as_myocardium[ring, CAVITY]

    def loss(p, full):
        return float(segmentation_loss(tf.constant(p[None], tf.float32), tf.constant(target), tf.constant([full])))

    assert loss(as_background, 0.0) == pytest.approx(loss(as_myocardium, 0.0), abs=1e-6)
    assert loss(as_myocardium, 1.0) > loss(as_background, 1.0) + 0.1  # with full labels it counts
    assert loss(proba_of(target[0]), 1.0) < 0.01


def test_range_model_by_hand_and_through_its_record():
    from benchmark.segment import RangeModel

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    x = rng.normal(size=(90, len(STACK_FEATURES))) * 0.1
    x[:, 0] += y * 3.0
    model = RangeModel(3, seed=0).fit(x, y)
    p = model.predict_proba(x)
    assert (p.argmax(1) == y).mean() == 1.0 and np.allclose(p.sum(1), 1.0)
    again = RangeModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert np.allclose(again.predict_proba(x), p)
    one = RangeModel(3, seed=0).fit(x[y == 1], y[y == 1]).predict_proba(x)
    assert np.allclose(one, np.eye(3)[[1] * 90])
    two = RangeModel(3, seed=0).fit(x[y > 0], y[y > 0]).predict_proba(x[y > 0])
    assert (two.argmax(1) == y[y > 0]).mean() == 1.0 and np.all(two[:, 0] == 0.0)


@pytest.fixture(scope="module")
def unmasked_phantom(tmp_path_factory):
    """The phantom's images and labels without its masks (4 patients)."""
    from data_prep import synthetic

    def stacks():
        for k in range(4):
            anat, frames = synthetic.make_patient(5, k)
            for frame, ph in frames.items():
                yield Stack(patient=f"syn{k:03d}", frame=frame, images=ph.images, labels=ph.labels,
                            sources=[f"s{i}" for i in range(len(ph.images))], pixel_spacing_mm=anat.spacing_mm)

    return write_dataset(tmp_path_factory.mktemp("data") / "unmasked", "synthetic", stacks(), source="test")


@pytest.mark.slow
def test_a_segmentation_run_end_to_end_resumed_and_predicting(tiny_synthetic, unmasked_phantom, tmp_path):
    out = tmp_path / "r"
    args = ["--backbone", "mobilenet", "--depth", "0", "--head", "segment", "--profile", "quick", "--epochs", "2",
            "--folds", "2", "--weights", "none", "--test-fraction", "0.25", "--data", str(tiny_synthetic)]
    proc = cli([*args, "--out", str(out)])
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout
    run = out / "mobilenet_d0+seg"
    assert not (out / "mobilenet_d0").exists()  # --head segment: no classification run
    metrics = json.loads((run / "test_metrics.json").read_text())
    cavity = metrics["segmentation"]["cavity"]
    assert cavity["n_all"] == cavity["n_apex"] + cavity["n_middle"] + cavity["n_base"] > 0
    assert {"decoded", "baselines", "range_exact"} <= metrics.keys()
    predictions = pd.read_csv(run / "test_predictions.csv")
    assert {"prediction", "p_OAP", "p_IN", "p_OBS", "decoded", "baseline_every_in"} <= set(predictions.columns)
    assert (run / "model" / "model.keras").is_file() and (run / "model" / "encoder.weights.h5").is_file()
    history = pd.read_csv(run / "cv_history.csv")
    assert len(history) == 2 * 2 and history["val_dice"].between(0, 1).all()
    summary = pd.read_csv(out / "summary.csv")
    assert "mobilenet_d0+seg" in set(summary["run"]) and "baseline_every_in" in set(summary["run"])
    # resumed after the test was lost: the final fit's weights are loaded, not trained again, and give the same test
    first = (run / "test_predictions.csv").read_text()
    (run / "DONE").unlink()
    (run / "test_predictions.csv").unlink()
    proc = cli([*args, "--out", str(out)])
    stdout, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout
    assert "epoch" not in stdout  # no fit ran again
    assert (run / "test_predictions.csv").read_text() == first
    # predict with the run's model: the IN range of every stack, a report outlining the predicted structures
    proc = subprocess.run([sys.executable, "-m", "benchmark", "predict", str(tiny_synthetic), "--model", str(run),
                           "--out", str(tmp_path / "pred")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranges = json.loads((tmp_path / "pred" / "ranges.json").read_text())
    assert len(ranges["stacks"]) == 16 and "depth 0+seg" in proc.stdout
    assert len(list((tmp_path / "pred").glob("report_*.png"))) == 16
    # a dataset without masks: one message naming the option, nothing written
    proc = cli([*args[:-1], str(unmasked_phantom), "--out", str(tmp_path / "none")])
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "--head segment" in stdout and "no masks" in stdout
    assert not (tmp_path / "none" / "mobilenet_d0+seg").exists()

"""`python -m benchmark predict`: a tiny untrained MobileNet (32 px, exported like protocol._export) on a synthetic
DICOM study, a dataset directory and NIfTI volumes; outputs and their consistency, apex -> base order, Grad-CAM
against hand-computed values, every refused input (exit 2, one message) and the viewer's keys."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import keras  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from dicom_factory import orientation_for, write_dicom  # noqa: E402
from matplotlib.backend_bases import KeyEvent  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from benchmark.predict.decide import StackPrediction, frame_key  # noqa: E402
from benchmark.predict.draw import DISPLAY_PX, grid_shape  # noqa: E402
from benchmark.predict.load import SLICE_CLASSES, TrainedModel  # noqa: E402
from benchmark.predict.network import predict_batch  # noqa: E402
from benchmark.predict.study import nifti_order  # noqa: E402
from benchmark.predict.viewer import PredictionViewer  # noqa: E402
from benchmark.__main__ import main  # noqa: E402
from benchmark.data import Dataset  # noqa: E402
from benchmark.preprocess import Preprocessing  # noqa: E402
from benchmark.layout import RESULTS_FORMAT  # noqa: E402
from benchmark.registry import HEAD_DENSE, HEAD_DROPOUT, HEAD_OUT, POOLED, get_spec  # noqa: E402
from benchmark.models import build_model  # noqa: E402
from data_prep.errors import DataPrepError  # noqa: E402
from data_prep.manifest import Stack, write_dataset  # noqa: E402

SIZE = 32
APEX_LPS = np.array([1.0, -1.0, -1.0]) / np.sqrt(3.0)
CLASSES = ("OAP", "IN", "OBS")


def disk(radius: float, value: int = 800, n: int = 24) -> np.ndarray:
    """A bright disk on a dim noisy background, so that percentile windowing has something to show."""
    yy, xx = np.mgrid[:n, :n]
    img = 100 + (np.arange(n * n).reshape(n, n) * 7919 % 50)
    img[(yy - n / 2) ** 2 + (xx - n / 2) ** 2 <= radius ** 2] = value
    return img.astype(np.uint16)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An untrained classifier exported as protocol._export writes it: RUN_DIR/model/model.keras + model.json."""
    keras.utils.set_random_seed(0)
    model = build_model(get_spec("mobilenet"), SIZE, 3, weights=None)
    run = tmp_path_factory.mktemp("run") / "mobilenet_d0"
    (run / "model").mkdir(parents=True)
    model.save(run / "model" / "model.keras")
    (run / "model" / "model.json").write_text(json.dumps({
        "results_format": RESULTS_FORMAT, "backbone": "mobilenet", "depth": 0, "classes": list(CLASSES),
        "preprocessing": Preprocessing(SIZE, "tf").key(), "code_version": "test", "keras": keras.__version__}))
    return run


def write_cine(folder: Path, n_pos: int = 5, n_phases: int = 2, normal=APEX_LPS) -> Path:
    """Positions k * 8 mm along the normal, so with the apex direction as normal the last position is the apex."""
    for k in range(n_pos):
        for ph in range(n_phases):
            instance = k * n_phases + ph + 1
            position = np.array([10.0, -20.0, 30.0]) + 8.0 * k * np.asarray(normal)
            write_dicom(folder / f"IM{instance:04d}.dcm", disk(2 + k, 500 + 10 * ph),
                        PatientName="Doe^Jane", PatientID="MRN-778899", PatientBirthDate="19700101",
                        StudyInstanceUID="1.2.3.4", SeriesInstanceUID="1.2.3.4.5", SeriesNumber=7,
                        InstanceNumber=instance, TriggerTime=40.0 * ph, ImageOrientationPatient=orientation_for(normal),
                        ImagePositionPatient=[round(float(x), 4) for x in position], PixelSpacing=[1.5, 1.5])
    return folder


def write_nifti(path: Path, data: np.ndarray, normal_lps=None) -> Path:
    """normal_lps: the slice axis in LPS (an oblique affine); None: the placeholder diag(-1, -1, 1) of ACDC."""
    if normal_lps is None:
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    else:
        n = np.asarray(normal_lps, float) / np.linalg.norm(normal_lps) * np.array([-1.0, -1.0, 1.0])  # to RAS
        a = np.cross([0.0, 0.0, 1.0], n)
        a /= np.linalg.norm(a)
        affine = np.eye(4)
        affine[:3, :3] = np.column_stack([1.5 * a, 1.5 * np.cross(n, a), 8.0 * n])
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def run_predict(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["predict", *[str(a) for a in argv]])
    out, err = capsys.readouterr()
    return rc, out, err


def check_outputs(out: Path, n_stacks: int, n_slices: int) -> tuple[pd.DataFrame, dict]:
    """Files exist; labels are OAP* IN* OBS* per stack; ranges.json agrees with predictions.csv."""
    pred = pd.read_csv(out / "predictions.csv", dtype={"patient": str, "frame": str})
    ranges = json.loads((out / "ranges.json").read_text())
    assert len(pred) == n_slices and len(ranges["stacks"]) == n_stacks
    p = pred[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (pred["argmax"] == [CLASSES[k] for k in p.argmax(axis=1)]).all()
    for entry in ranges["stacks"]:
        sub = pred[(pred.patient == entry["patient"]) & (pred.frame == entry["frame"])].sort_values("slice")
        assert len(sub) == entry["n_slices"]
        ranks = [CLASSES.index(v) for v in sub["monotone"]]
        assert ranks == sorted(ranks), f"not OAP* IN* OBS*: {list(sub['monotone'])}"
        for key, column in (("monotone", "monotone"), ("argmax", "argmax")):
            in_slices = sub["slice"][sub[column] == "IN"].tolist()
            expected = ({"first": min(in_slices), "last": max(in_slices), "n_in": len(in_slices)}
                        if in_slices else None)
            assert entry[key] == expected, (key, entry)
        assert entry["argmax_is_monotone"] == ([CLASSES.index(v) for v in sub["argmax"]] ==
                                               sorted(CLASSES.index(v) for v in sub["argmax"]))
        assert (out / entry["report"]).is_file() and (out / entry["report"]).stat().st_size > 10_000
    return pred, ranges


# ------------------------------------------------------------------------------------------ end to end

def test_dicom_study(run_dir, tmp_path, capsys):
    study = write_cine(tmp_path / "study", n_pos=5, n_phases=2)
    out = tmp_path / "out"
    rc, stdout, err = run_predict(capsys, "--model", run_dir, study, "--out", out)
    assert rc == 0, err
    pred, ranges = check_outputs(out, n_stacks=2, n_slices=10)
    # positions run towards the apex, so slice 0 (apex) is the last position, IM0009/IM0010
    assert pred[pred.frame == "0"].sort_values("slice")["source"].tolist() == [
        f"IM{k * 2 + 1:04d}.dcm" for k in range(4, -1, -1)]
    assert ranges["orientation"][0]["decided_by"] == "geometry"
    assert "phase 0: " in stdout and "phase 1: " in stdout and "timing: " in stdout
    for path in out.iterdir():  # header values never reach an output
        for value in (b"Doe^Jane", b"MRN-778899", b"19700101"):
            assert value not in path.read_bytes(), (value, path)
    # a second run into the same directory updates it; a report of a stack no longer there is removed
    (out / "report_old_9.png").write_bytes(b"stale")
    rc, _, err = run_predict(capsys, "--model", run_dir / "model", study, "--out", out, "--apex-first")
    assert rc == 0, err
    assert not (out / "report_old_9.png").exists()
    assert pd.read_csv(out / "predictions.csv", dtype={"frame": str}).query("frame == '0'").sort_values(
        "slice")["source"].tolist() == [f"IM{k * 2 + 1:04d}.dcm" for k in range(5)]


def test_dataset_directory_matches_training_preprocessing(run_dir, tmp_path, capsys):
    stacks = [Stack("p1", frame, [disk(r) for r in (1, 3, 5, 7, 9, 4)], ["OAP", "IN", "IN", "IN", "OBS", "OBS"],
                    [f"s{i}" for i in range(6)]) for frame in ("ED", "ES")]
    data = write_dataset(tmp_path / "data", "test", stacks, source="test")
    out = tmp_path / "pred"
    rc, stdout, err = run_predict(capsys, "--model", run_dir, data, "--out", out)
    assert rc == 0, err
    pred, _ = check_outputs(out, n_stacks=2, n_slices=12)
    assert pred["label"].tolist()[:6] == ["OAP", "IN", "IN", "IN", "OBS", "OBS"]
    assert [line.split(":")[0] for line in stdout.splitlines() if ": IN" in line or "no IN" in line] == ["ED", "ES"]
    # the probabilities are those of the exported model on Dataset.make_input, the training path's inputs
    ds = Dataset.load(data)
    model = keras.saving.load_model(run_dir / "model" / "model.keras", compile=False)
    x = np.stack([ds.make_input(i, Preprocessing(SIZE, "tf")) for i in range(len(ds.rows))])
    expected = model.predict(x, verbose=0)
    got = pred.sort_values(["frame", "slice"])[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(got, expected, atol=1e-5)


def test_nifti_3d_geometry_and_4d_with_flag(run_dir, tmp_path, capsys):
    vol = np.stack([disk(2 + k).astype(np.float32) for k in range(5)], axis=-1).transpose(1, 0, 2)  # (x, y, slice)
    path = write_nifti(tmp_path / "vol.nii.gz", vol, normal_lps=APEX_LPS)
    rc, stdout, err = run_predict(capsys, "--model", run_dir, path, "--out", tmp_path / "o3")
    assert rc == 0, err
    pred, ranges = check_outputs(tmp_path / "o3", n_stacks=1, n_slices=5)
    # the slice axis points at the apex: the last file slice is the apex
    assert pred.sort_values("slice")["source"].tolist() == [f"vol.nii.gz[slice {k}]" for k in range(4, -1, -1)]
    assert pred["patient"].unique().tolist() == ["vol"] and "frame 0: " in stdout

    cine = np.stack([vol, vol * 1.1, vol * 0.9], axis=-1)                    # (x, y, slice, time)
    path4 = write_nifti(tmp_path / "cine.nii", cine)
    rc, _, err = run_predict(capsys, "--model", run_dir, path4, "--out", tmp_path / "o4", "--base-first",
                             "--patient", "p7")
    assert rc == 0, err
    pred, ranges = check_outputs(tmp_path / "o4", n_stacks=3, n_slices=15)
    first = pred[pred.frame == "2"].sort_values("slice")["source"].tolist()
    assert first == [f"cine.nii[slice {k}, time 2]" for k in range(4, -1, -1)]
    assert ranges["orientation"][0]["decided_by"] == "--base-first"
    assert set(pred["patient"]) == {"p7"}


# ------------------------------------------------------------------------------------------ refused inputs

def assert_refused(capsys, argv, *needles) -> None:
    rc, _, err = run_predict(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("benchmark predict: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_bad_model_directories(run_dir, tmp_path, capsys):
    study = write_cine(tmp_path / "study", n_pos=3, n_phases=1)
    for missing in ("model.keras", "model.json"):
        bad = tmp_path / f"no_{missing}"
        shutil.copytree(run_dir, bad)
        (bad / "model" / missing).unlink()
        assert_refused(capsys, ["--model", bad, study, "--out", tmp_path / "o"], str(bad / "model" / missing))
    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    meta = json.loads((old / "model" / "model.json").read_text())
    (old / "model" / "model.json").write_text(json.dumps({**meta, "results_format": RESULTS_FORMAT + 1}))
    assert_refused(capsys, ["--model", old, study, "--out", tmp_path / "o"], "model.json", "results_format")
    (old / "model" / "model.json").write_text(json.dumps({**meta, "classes": ["a", "b", "c"]}))
    assert_refused(capsys, ["--model", old, study, "--out", tmp_path / "o"], "model.json", "OAP")
    (old / "model" / "model.json").write_text("{not json")
    assert_refused(capsys, ["--model", old, study, "--out", tmp_path / "o"], "model.json")
    (old / "model" / "model.json").write_text(json.dumps(meta))
    (old / "model" / "model.keras").write_bytes(b"truncated")
    assert_refused(capsys, ["--model", old, study, "--out", tmp_path / "o"], "model.keras")
    assert_refused(capsys, ["--model", tmp_path / "nowhere", study, "--out", tmp_path / "o"], "nowhere")
    assert not (tmp_path / "o").exists()


def test_bad_studies(run_dir, tmp_path, capsys):
    model = ["--model", run_dir, "--out", tmp_path / "o"]
    (tmp_path / "empty").mkdir()
    assert_refused(capsys, [*model, tmp_path / "empty"], "STUDY", "is empty")
    assert_refused(capsys, [*model, tmp_path / "absent"], "STUDY", "not found")
    one_position = write_cine(tmp_path / "one", n_pos=1, n_phases=3)
    assert_refused(capsys, [*model, one_position], "not short-axis-like")
    vol = np.stack([disk(2 + k).astype(np.float32) for k in range(4)], axis=-1)
    placeholder = write_nifti(tmp_path / "acdc_like.nii.gz", vol)
    assert_refused(capsys, [*model, placeholder], "acdc_like.nii.gz", "--apex-first")
    data = write_dataset(tmp_path / "data", "test", [Stack("p", "0", [disk(3), disk(4)], ["", ""], ["a", "b"])],
                         source="t")
    assert_refused(capsys, [*model, data, "--apex-first"], "dataset directory")
    assert_refused(capsys, [*model, data, "--show"], "--show", "cannot open a window")  # the tests run on Agg
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert_refused(capsys, ["--model", run_dir, "--out", tmp_path / "busy", data], "busy")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ pure parts

def test_nifti_order_from_the_affine_or_the_flags():
    base = nib.Nifti1Image(np.zeros((2, 2, 3), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))
    assert nifti_order(base, 3, "apex_first", "v")[0] == [0, 1, 2]
    assert nifti_order(base, 3, "base_first", "v")[0] == [2, 1, 0]
    with pytest.raises(DataPrepError, match="body axis"):
        nifti_order(base, 3, None, "v")
    bare = nib.Nifti1Image(np.zeros((2, 2, 3), np.float32), None)
    with pytest.raises(DataPrepError, match="no sform or qform"):
        nifti_order(bare, 3, None, "v")
    # slice axis (RAS) (-1, 1, -1)/sqrt 3 is the LPS apex direction: positions grow towards the apex
    oblique = np.eye(4)
    oblique[:3, 2] = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0) * 8
    order, evidence, notes = nifti_order(nib.Nifti1Image(np.zeros((2, 2, 3), np.float32), oblique), 3, None, "v")
    assert order == [2, 1, 0] and evidence["cos_normal_apex"] == pytest.approx(1.0) and notes == []
    oblique[:3, 2] *= -1
    assert nifti_order(nib.Nifti1Image(np.zeros((2, 2, 3), np.float32), oblique), 3, None, "v")[0] == [0, 1, 2]


def test_grid_frame_order_and_summary():
    assert grid_shape(12) == (2, 6)
    assert grid_shape(8) == (1, 8)
    assert grid_shape(20) == (3, 7)
    assert sorted(["10", "2", "ES", "0", "ED"], key=frame_key) == ["0", "2", "10", "ED", "ES"]
    stack = fake_stack(proba=[[.8, .1, .1], [.2, .7, .1], [.6, .3, .1], [.1, .8, .1], [.1, .1, .8]],
                       slices=[3, 4, 5, 6, 7])
    assert stack.monotone.tolist() == [0, 1, 1, 1, 2]
    assert stack.in_slices(stack.monotone) == {"first": 4, "last": 6, "n_in": 3}
    assert stack.in_slices(stack.argmax) == {"first": 4, "last": 6, "n_in": 2}
    assert stack.summary() == ("ED: IN slices 4-6 of 5 (decoded); argmax 4-6 (argmax not in OAP-IN-OBS order); "
                               "every slice IN (baseline): 3-7")
    none = fake_stack(proba=[[.9, .05, .05], [.1, .1, .8]], slices=[0, 1])
    assert none.summary() == "ED: no IN slice of 2 (decoded); argmax no IN; every slice IN (baseline): 0-1"


def test_probabilities_and_gradcam_of_the_argmax_class():
    """fmap = the first two input channels; head_dense = identity + 10 (ReLU inactive); logits = head_dense @ W.
    d logit_c / d fmap_k(i, j) = W[k, c] / 16 for a 4 x 4 map, so the CAM is relu(W[0, c] A_0 + W[1, c] A_1)."""
    inp = keras.Input((4, 4, 3), name="image")
    fmap = keras.layers.Conv2D(2, 1, use_bias=False, name="fmap")(inp)
    x = keras.layers.GlobalAveragePooling2D(name=POOLED)(fmap)
    x = keras.layers.Dense(2, activation="relu", name=HEAD_DENSE)(x)
    x = keras.layers.Dropout(0.5, name=HEAD_DROPOUT)(x)
    out = keras.layers.Dense(3, activation="softmax", name=HEAD_OUT)(x)
    model = keras.Model(inp, out)
    model.get_layer("fmap").set_weights([np.array([[[[1, 0], [0, 1], [0, 0]]]], np.float32)])
    model.get_layer(HEAD_DENSE).set_weights([np.eye(2, dtype=np.float32), np.full(2, 10, np.float32)])
    w = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -0.5]], np.float32)
    model.get_layer(HEAD_OUT).set_weights([w, np.zeros(3, np.float32)])
    a0 = np.arange(16, dtype=np.float32).reshape(4, 4) / 8
    a1 = np.ones((4, 4), np.float32) * 1.5
    x = np.stack([a0, a1, np.zeros((4, 4), np.float32)], axis=-1)[None]
    trained = TrainedModel(Path("."), model, "mobilenet", 0, SLICE_CLASSES, None, "fmap", {})
    proba, features, cams = predict_batch(trained, x)
    assert features is None  # only a stack model reads pooled features
    assert proba.argmax() == 2  # logits (0, 0, (0.9375 + 10) - 0.5 * (1.5 + 10))
    assert np.allclose(proba, model.predict(x, verbose=0), atol=1e-6)
    cam = np.maximum(a0 - 0.5 * a1, 0)
    assert np.allclose(cams[0], cam / cam.max(), atol=1e-5)


# ------------------------------------------------------------------------------------------ viewer

def fake_stack(proba, slices, frame="ED") -> StackPrediction:
    from benchmark.decode import monotone_decode
    proba = np.asarray(proba, float)
    n = len(proba)
    return StackPrediction(
        patient="p", frame=frame, name=frame, rows=np.arange(n), slices=np.asarray(slices), proba=proba,
        monotone=monotone_decode(proba), views=[np.full((DISPLAY_PX,) * 2, k / n) for k in range(n)],
        cams=[np.eye(3) for _ in range(n)])


def key(fig, name: str) -> None:
    fig.canvas.callbacks.process("key_press_event", KeyEvent("key_press_event", fig.canvas, name))


def test_viewer_keys():
    stacks = [fake_stack([[.8, .1, .1], [.1, .8, .1], [.1, .1, .8]], [0, 1, 2], frame)
              for frame in ("ED", "ES", "3")]
    fig = Figure()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    viewer = PredictionViewer(stacks, SimpleNamespace(name="m", classes=CLASSES, stack=None, segments=False), fig=fig)

    def images_per_tile():
        return max(len(ax.images) for ax in fig.axes)

    assert (viewer.index, viewer.show_cam, images_per_tile()) == (0, False, 1)
    assert fig._suptitle.get_text().startswith("ED: IN slices 1-1 of 3")
    key(fig, "right")
    key(fig, "n")
    assert viewer.index == 2 and fig._suptitle.get_text().startswith("3: ")
    key(fig, "right")  # clamped at the last stack
    assert viewer.index == 2
    key(fig, "left")
    assert viewer.index == 1 and fig._suptitle.get_text().startswith("ES: ")
    key(fig, "c")
    assert viewer.show_cam and images_per_tile() == 2  # the CAM is drawn over the image
    key(fig, "right")
    assert viewer.index == 2 and images_per_tile() == 2  # the CAM mode stays on when changing stack
    key(fig, "c")
    assert not viewer.show_cam and images_per_tile() == 1
    key(fig, "x")  # other keys do nothing
    assert (viewer.index, viewer.show_cam) == (2, False)


@pytest.mark.parametrize("side, refused", [(10, False), (5, True)])
def test_images_of_a_few_pixels_are_refused_or_warned_of(run_dir, tmp_path, capsys, side, refused):
    """A 32 px model: 10 px images (a 6 px crop, 5.3x) are predicted with a warning; 5 px (a 3 px crop, 10.7x) are
    refused naming the stack, before the model is loaded."""
    stack = Stack(patient="p", frame="0", labels=[""] * 3, pixel_spacing_mm=22.0,
                  images=[disk(1 + k, n=side) for k in range(3)], sources=[f"s{k}" for k in range(3)])
    data = write_dataset(tmp_path / "thumbs", "test", [stack], source="test")
    rc, _, err = run_predict(capsys, "--model", run_dir, data, "--out", tmp_path / "o")
    what = f"stack p frame 0: images of {side} x {side} px, 22 mm pixels, their centre crop enlarged"
    if refused:
        assert rc == 2 and err.strip().splitlines() == [
            f"benchmark predict: error: {data}: {what} 10.7x to the model's 32 px input; at that scale the network "
            f"sees interpolation, not anatomy, so nothing is predicted; give the study at its native resolution"]
        assert not (tmp_path / "o" / "predictions.csv").exists()
    else:
        assert rc == 0 and f"warning: {what} 5.3x to the model's 32 px input" in err, err

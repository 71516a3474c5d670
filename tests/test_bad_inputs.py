"""Bad input to every command line: `python -m data_prep`, `python -m benchmark`, `python -m benchmark predict` and
`python -m benchmark.report`.

Each refused case must give exactly one message on stderr naming the file or option, exit code 2, leave every file
that existed before byte for byte as it was (nothing finished is lost) and create nothing that looks finished
(DONE markers, manifests, summaries, predictions; no leftover temporary `.partial` names). Cases that are not
refusals (a corrupt cache, another dataset's cache, diverging learning rates) have their own tests below.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from dicom_factory import write_dicom

from benchmark import profiles, report
from benchmark.__main__ import main as benchmark_main
from benchmark.grid import make_experiment
from benchmark.preprocess import Preprocessing
from benchmark.layout import RESULTS_FORMAT
from benchmark.protocol import ModelRun
from benchmark.registry import get_spec
from data_prep import images
from data_prep.__main__ import main as data_prep_main
from data_prep.manifest import Stack, load_image, write_dataset

MAINS: dict[str, Callable[[list[str]], int]] = {
    "data_prep": data_prep_main,
    "benchmark": benchmark_main,
    "predict": lambda argv: benchmark_main(["predict", *argv]),
    "report": report.main,
}
PREFIX = {"benchmark": "benchmark: error: ", "predict": "benchmark predict: error: ",
          "report": "benchmark.report: error: "}  # data_prep: "data_prep <source>: error: "
# files whose presence says "finished": none may appear after a refusal
FINISHED = {"DONE", "manifest.csv", "dataset.json", "summary.csv", "summary.md", "test_metrics.json",
            "predictions.csv", "ranges.json", "table1_time.csv", "table2_test.csv", "model.keras"}
TRAIN = ["--epochs", "1", "--folds", "2", "--weights", "none"]


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file under the roots."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots if root.exists() for p in sorted(root.rglob("*")) if p.is_file()}


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_manifest(root: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    path = root / "manifest.csv"
    edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)
    return root


def stacks_dataset(path: Path, labels_per_patient: dict[str, list[str]], classes=("OAP", "IN", "OBS"),
                   split: dict[str, str] | None = None) -> Path:
    """One 16x16 stack per patient with the given slice labels."""
    rng = np.random.default_rng(0)
    stacks = [Stack(p, "ED", [rng.integers(0, 999, (16, 16)).astype(np.uint16) for _ in labels], labels,
                    [f"x{i}" for i in range(len(labels))], split=(split or {}).get(p))
              for p, labels in labels_per_patient.items()]
    return write_dataset(path, "test", stacks, source="test", classes=classes)


def dicom_study(folder: Path, n: int = 3) -> Path:
    """n slice positions of one series along z (readable DICOM; only reading matters for the refusals here)."""
    for k in range(n):
        write_dicom(folder / f"IM{k + 1:04d}.dcm", np.full((16, 16), 100 * k), PatientID="P", StudyInstanceUID="1.2",
                    SeriesInstanceUID="1.2.3", SeriesNumber=1, InstanceNumber=k + 1, TriggerTime=0.0,
                    ImageOrientationPatient=[1, 0, 0, 0, 1, 0], ImagePositionPatient=[0, 0, 8.0 * k],
                    PixelSpacing=[1.5, 1.5])
    return folder


def fake_model(run: Path) -> Path:
    """A run directory whose model.json is valid: predict checks it, then reads the study before loading the
    model, so a refused study never needs a real model.keras."""
    (run / "model").mkdir(parents=True)
    (run / "model" / "model.keras").write_bytes(b"never loaded")
    (run / "model" / "model.json").write_text(json.dumps({
        "results_format": RESULTS_FORMAT, "backbone": "mobilenet", "depth": 0, "classes": ["OAP", "IN", "OBS"],
        "preprocessing": Preprocessing(32, "tf").key()}))
    return run


@dataclass
class Ctx:
    """What a case builds its input from; every case writes below tmp."""

    tmp: Path
    tiny: Path
    monkeypatch: pytest.MonkeyPatch
    results_small: Path

    @property
    def blocker(self) -> Path:
        """A regular file: an --out below it cannot be created, for root as for anyone."""
        path = self.tmp / "a_file"
        path.write_text("")
        return path

    def bench(self, *args: str) -> list[str]:
        return ["--data", str(self.tiny), "--out", str(self.tmp / "out"), "--epochs", "1", "--folds", "2", *args]


@dataclass
class Case:
    cli: str
    argv: list
    needles: tuple[str, ...]


CASES: dict[str, Callable[[Ctx], Case]] = {}


def case(name: str):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


# ---- data_prep ---------------------------------------------------------------------------------------------------

@case("data_prep/corrupt_dicom")
def _(c: Ctx) -> Case:
    study = dicom_study(c.tmp / "study")
    bad = study / "IM0002.dcm"
    bad.write_bytes(bad.read_bytes()[:300])
    return Case("data_prep", ["dicom", study, "--out", c.tmp / "ds"], ("IM0002.dcm", "corrupt or truncated DICOM"))


@case("data_prep/image_set_with_one_class")
def _(c: Ctx) -> Case:
    for k in range(2):
        (c.tmp / "src" / "only").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(c.tmp / "src" / "only" / f"p{k}_a.png"), np.zeros((4, 4), np.uint8))
    return Case("data_prep", ["images", c.tmp / "src", "--out", c.tmp / "ds", "--patient-regex", r"^(p\d)_"],
                (str(c.tmp / "src"), "only one class ('only')"))


@case("data_prep/unwritable_out")
def _(c: Ctx) -> Case:
    return Case("data_prep", ["synthetic", "--patients", "2", "--out", c.blocker / "ds"], (f"--out {c.blocker}/ds",))


# ---- benchmark -----------------------------------------------------------------------------------------------------

@case("benchmark/unknown_backbone")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--backbone", "resnet18"),
                ("unknown backbone 'resnet18'; valid: mobilenet, mobilenetv2",))


@case("benchmark/unknown_profile")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--profile", "huge"), ("unknown profile 'huge'; valid: paper, quick",))


@case("benchmark/bad_epochs")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--epochs", "0"), ("--epochs must be >= 1",))


@case("benchmark/bad_test_fraction")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--test-fraction", "1.5"), ("--test-fraction must be between 0 and 1",))


@case("benchmark/offline_weights")
def _(c: Ctx) -> Case:
    c.monkeypatch.setenv("KERAS_HOME", str(c.tmp / "empty_keras_home"))
    c.monkeypatch.setenv("CARDIAC_BENCH_OFFLINE", "1")  # else it downloads, as Keras does
    return Case("benchmark", c.bench("--backbone", "vgg16", "--weights", "imagenet"),
                ("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",))


@case("benchmark/unwritable_out")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--out", str(c.blocker / "sub")), (f"--out {c.blocker}/sub is not writable",))


@case("benchmark/unwritable_out_chmod")
def _(c: Ctx) -> Case:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod cannot make a directory unwritable (benchmark/unwritable_out covers "
                    "an --out that cannot be created, for root too)")
    locked = c.tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return Case("benchmark", c.bench("--out", str(locked)), (f"--out {locked} is not writable",))


@case("benchmark/not_a_dataset")
def _(c: Ctx) -> Case:
    (c.tmp / "empty").mkdir()
    return Case("benchmark", c.bench("--data", str(c.tmp / "empty")), (str(c.tmp / "empty"), "manifest.csv is missing"))


@case("benchmark/manifest_missing_columns")
def _(c: Ctx) -> Case:
    data = edit_manifest(copy_dataset(c.tiny, c.tmp / "data"), lambda df: df.drop(columns=["label", "patient"]))
    return Case("benchmark", c.bench("--data", str(data)),
                (str(data / "manifest.csv"), "missing column(s) patient, label"))


@case("benchmark/manifest_duplicate_rows")
def _(c: Ctx) -> Case:
    data = edit_manifest(copy_dataset(c.tiny, c.tmp / "data"), lambda df: pd.concat([df, df.iloc[[5]]]))
    return Case("benchmark", c.bench("--data", str(data)), (str(data / "manifest.csv"), "duplicate rows for patient"))


def manifest_path_outside(c: Ctx, column: str, path: str) -> Path:
    """tiny with row 3's `column` pointing outside the dataset directory, at a copy of its file that exists."""
    data = copy_dataset(c.tiny, c.tmp / "data")
    (c.tmp / "elsewhere").mkdir()
    df = pd.read_csv(data / "manifest.csv", keep_default_na=False)
    shutil.copy(data / df.loc[3, "image"], c.tmp / "elsewhere" / "x.png")
    return edit_manifest(data, lambda df: df.assign(**{column: [path if i == 3 else v
                                                                   for i, v in enumerate(df.get(column, ""))]}))


@case("benchmark/manifest_image_outside_the_dataset")
def _(c: Ctx) -> Case:
    data = manifest_path_outside(c, "image", "../elsewhere/x.png")
    return Case("benchmark", c.bench("--data", str(data)),
                (f"{data / 'manifest.csv'}: row 4 (line 5): image '../elsewhere/x.png' lies outside {data}",))


@case("predict/manifest_mask_outside_the_dataset")
def _(c: Ctx) -> Case:
    path = str(c.tmp / "elsewhere" / "x.png")
    data = manifest_path_outside(c, "mask", path)
    return Case("predict", ["--model", fake_model(c.tmp / "run"), data, "--out", c.tmp / "o"],
                (f"{data / 'manifest.csv'}: row 4 (line 5): mask {path!r} lies outside {data}",))


@case("benchmark/unknown_labels")
def _(c: Ctx) -> Case:
    data = edit_manifest(copy_dataset(c.tiny, c.tmp / "data"), lambda df: df.assign(
        label=df["label"].where(df.index != 3, "MID")))
    return Case("benchmark", c.bench("--data", str(data)),
                (str(data / "manifest.csv"), "unknown label(s) ['MID']", "['OAP', 'IN', 'OBS']"))


@case("benchmark/no_labels")
def _(c: Ctx) -> Case:
    data = stacks_dataset(c.tmp / "unlabelled", {f"p{i}": ["", "", ""] for i in range(3)})
    return Case("benchmark", c.bench("--data", str(data)), (str(data), "no labelled slices"))


@case("benchmark/empty_class")
def _(c: Ctx) -> Case:
    data = stacks_dataset(c.tmp / "no_obs", {f"p{i}": ["OAP", "IN", "IN"] for i in range(8)})
    return Case("benchmark", c.bench("--data", str(data), "--test-fraction", "0.25"),
                (str(data), "class OBS has no slice in the training pool (no labelled slice has it)"))


def rare_class_dataset(tmp: Path) -> Path:
    """An image set (CSV: path, patient, label, split) with classes a, b and rare; only patient p0 has `rare`;
    p6 and p7 are held out for testing by the split column."""
    rows = []
    for i in range(8):
        for k, label in enumerate(["a", "b", "b"] + (["rare"] if i == 0 else [])):
            name = f"p{i}_{k}.png"
            cv2.imwrite(str(tmp / name), np.full((8, 8), 10 * k, np.uint8))
            rows.append({"path": name, "patient": f"p{i}", "label": label,
                         "split": "test" if i >= 6 else "train"})
    pd.DataFrame(rows).to_csv(tmp / "set.csv", index=False)
    return images.build(tmp / "set.csv", tmp / "rare", classes="a,b,rare")


@case("benchmark/class_without_a_patient_in_the_training_folds")
def _(c: Ctx) -> Case:
    data = rare_class_dataset(c.tmp)
    return Case("benchmark", c.bench("--data", str(data)), ("class rare has no training slice", "fewer folds"))


@case("benchmark/test_fraction_leaves_a_class_out_of_the_folds")
def _(c: Ctx) -> Case:
    data = rare_class_dataset(c.tmp)
    return Case("benchmark", c.bench("--data", str(data), "--test-fraction", "0.75"),
                ("--test-fraction 0.75 (2 training patients left): ", "rare", "a smaller --test-fraction leaves more"))


@case("benchmark/test_data_with_other_classes")
def _(c: Ctx) -> Case:
    other = rare_class_dataset(c.tmp)
    return Case("benchmark", c.bench("--test-data", str(other)), ("--test-data classes", "'rare'"))


@case("benchmark/test_patients_overlap_training")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--test-data", str(c.tiny)),
                ("--test-data shares 8 patient(s) with --data", "test patients must be unseen"))


@case("benchmark/split_column_puts_a_patient_in_train_and_test")
def _(c: Ctx) -> Case:
    data = edit_manifest(copy_dataset(c.tiny, c.tmp / "data"), lambda df: df.assign(
        split=np.where((df["patient"] == df["patient"].iloc[0]) & (df["frame"] == "ES"), "test", "train")))
    return Case("benchmark", c.bench("--data", str(data)), (str(data), "in train and test"))


@case("benchmark/truncated_png")
def _(c: Ctx) -> Case:
    data = copy_dataset(c.tiny, c.tmp / "data")
    bad = sorted((data / "images").glob("*.png"))[7]
    bad.write_bytes(bad.read_bytes()[:100])
    return Case("benchmark", c.bench("--data", str(data), "--backbone", "mobilenet", "--depth", "0",
                                     "--weights", "none", "--test-fraction", "0.25"),
                (str(bad), "unreadable or truncated"))


@case("benchmark/results_of_an_older_version")
def _(c: Ctx) -> Case:
    """OUT holds a finished run of results format 0: refused before anything in OUT is written."""
    run = c.tmp / "out" / "mobilenet_d0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"results_format": 0, "run": "mobilenet_d0", "backbone": "mobilenet"}))
    for name in ("DONE", "test_metrics.json", "selection.json"):
        (run / name).write_text("{}")
    (c.tmp / "out" / "folds.csv").write_text("from the older version\n")
    return Case("benchmark", c.bench("--backbone", "mobilenet", "--depth", "0", "--weights", "none",
                                     "--test-fraction", "0.25"),
                (str(run), "results format 0", f"this code writes {RESULTS_FORMAT}", "another --out"))


# each input is checked once, up front, before any training
CBR = ("--backbone", "cbr_tiny", "--weights", "none", "--test-fraction", "0.25")


@case("benchmark/empty_backbone_list")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--backbone", ","), ("--backbone ','", "names no backbone"))


@case("benchmark/negative_seed")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--seed", "-1", *CBR), ("--seed must be between 0 and 4294967295, got -1",))


@case("benchmark/more_folds_than_patients")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--backbone", "cbr_tiny", "--folds", "50"),
                ("--folds 50: the training pool's 6 patient(s) cannot make 50 patient-grouped folds",
                 "use --folds 6 or fewer"))


@case("benchmark/test_fraction_holds_out_nobody")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--backbone", "cbr_tiny", "--test-fraction", "0.01"),
                ("--test-fraction 0.01 of 8 patients holds out no patient", "usable fractions here: 0.063 to 0.812"))


@case("benchmark/test_fraction_leaves_too_few_for_the_folds")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--backbone", "cbr_tiny", "--test-fraction", "0.9"),
                ("--test-fraction 0.9 of 8 patients leaves 1 training patient(s), fewer than the 2 patient-grouped "
                 "CV folds (--folds) need",))


@case("benchmark/split_column_unknown_value")
def _(c: Ctx) -> Case:
    data = edit_manifest(copy_dataset(c.tiny, c.tmp / "data"), lambda df: df.assign(
        split=np.where(df["patient"] == df["patient"].iloc[0], "validation", "train")))
    return Case("benchmark", c.bench("--data", str(data), *CBR[:4]),
                (str(data / "manifest.csv"), "column split holds 'validation'", "allowed: train, test or empty"))


@case("benchmark/dataset_json_not_an_object")
def _(c: Ctx) -> Case:
    data = copy_dataset(c.tiny, c.tmp / "data")
    (data / "dataset.json").write_text("[\"OAP\", \"IN\", \"OBS\"]")
    return Case("benchmark", c.bench("--data", str(data), *CBR), (str(data / "dataset.json"),
                                                                  "expected a JSON object, got list"))


@case("benchmark/dataset_json_classes_not_strings")
def _(c: Ctx) -> Case:
    data = copy_dataset(c.tiny, c.tmp / "data")
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "classes": [1, 2, 3]}))
    return Case("benchmark", c.bench("--data", str(data), *CBR),
                (str(data / "dataset.json"), "classes must be a list of distinct, non-empty class names", "[1, 2, 3]"))


def tiny_with_bad_image(c: Ctx, write: Callable[[Path], Path | None]) -> tuple[Path, Path]:
    """tiny copied, one labelled slice's image replaced by what write(its path) leaves (a new path the manifest then
    names, or None: the path as it is)."""
    data = copy_dataset(c.tiny, c.tmp / "data")
    rows = pd.read_csv(data / "manifest.csv", dtype=str, keep_default_na=False)
    i = rows.index[rows["label"] != ""][5]
    bad = write(data / rows.at[i, "image"]) or data / rows.at[i, "image"]
    rows.at[i, "image"] = bad.relative_to(data).as_posix()
    rows.to_csv(data / "manifest.csv", index=False)
    return data, bad


def nan_npy(png: Path) -> Path:
    png.unlink()
    np.save(png.with_suffix(".npy"), np.where(np.eye(16) > 0, np.nan, 100.0))
    return png.with_suffix(".npy")


@case("benchmark/nan_image")
def _(c: Ctx) -> Case:
    data, bad = tiny_with_bad_image(c, nan_npy)
    return Case("benchmark", c.bench("--data", str(data), *CBR), (f"image file {bad}", "NaN or infinite"))


@case("benchmark/missing_image")
def _(c: Ctx) -> Case:
    data, bad = tiny_with_bad_image(c, Path.unlink)
    return Case("benchmark", c.bench("--data", str(data), *CBR), (f"image file not found: {bad}",))


@case("benchmark/empty_image_file")
def _(c: Ctx) -> Case:
    data, bad = tiny_with_bad_image(c, lambda p: [p.write_bytes(b""), None][1])
    return Case("benchmark", c.bench("--data", str(data), *CBR), (str(bad), "unreadable or truncated"))


@case("benchmark/weights_not_hdf5")
def _(c: Ctx) -> Case:
    junk = c.tmp / "mobilenet.h5"
    junk.write_bytes(b"not an HDF5 file")
    return Case("benchmark", c.bench("--backbone", "mobilenet", "--depth", "0", "--weights", str(junk)),
                (f"--weights {junk}: not a readable HDF5 (.h5) weights file",))


@case("benchmark/cache_dir_is_a_file")
def _(c: Ctx) -> Case:
    return Case("benchmark", c.bench("--cache-dir", str(c.blocker), *CBR),
                (f"--cache-dir {c.blocker}: it is a file, not a directory",))


# ---- benchmark predict ---------------------------------------------------------------------------------------------

@case("predict/corrupt_dicom")
def _(c: Ctx) -> Case:
    study = dicom_study(c.tmp / "study")
    (study / "IM0002.dcm").write_bytes((study / "IM0002.dcm").read_bytes()[:300])
    return Case("predict", ["--model", fake_model(c.tmp / "run"), study, "--out", c.tmp / "o"], ("IM0002.dcm",))


@case("predict/corrupt_nifti")
def _(c: Ctx) -> Case:
    (c.tmp / "junk.nii.gz").write_bytes(b"not a nifti volume")
    return Case("predict", ["--model", fake_model(c.tmp / "run"), c.tmp / "junk.nii.gz", "--out", c.tmp / "o"],
                ("junk.nii.gz", "unreadable"))


@case("predict/manifest_duplicate_rows")
def _(c: Ctx) -> Case:
    data = edit_manifest(copy_dataset(c.tiny, c.tmp / "data"), lambda df: pd.concat([df, df.iloc[[0]]]))
    return Case("predict", ["--model", fake_model(c.tmp / "run"), data, "--out", c.tmp / "o"],
                (str(data / "manifest.csv"), "duplicate rows"))


@case("predict/unwritable_out")
def _(c: Ctx) -> Case:
    return Case("predict", ["--model", fake_model(c.tmp / "run"), c.tiny, "--out", c.blocker / "o"],
                (f"--out {c.blocker}/o",))


@case("predict/nan_image")
def _(c: Ctx) -> Case:
    data, bad = tiny_with_bad_image(c, nan_npy)
    return Case("predict", ["--model", fake_model(c.tmp / "run"), data, "--out", c.tmp / "o"],
                (f"image file {bad}", "NaN or infinite"))


@case("predict/model_json_names_another_backbone")
def _(c: Ctx) -> Case:
    """A CBR-Tiny model.keras under a model.json that says MobileNet (same input size, three classes)."""
    from benchmark.models import build_model
    run = fake_model(c.tmp / "run")
    build_model(get_spec("cbr_tiny"), 32, 3, seed=0).save(run / "model" / "model.keras")
    return Case("predict", ["--model", run, c.tiny, "--out", c.tmp / "o"],
                (str(run / "model" / "model.json"), "says backbone mobilenet", "(it is a CBR network)"))


# ---- benchmark.report ----------------------------------------------------------------------------------------------

def results_copy(c: Ctx, edit: Callable[[dict], dict | str] | None = None) -> Path:
    """results_small copied; edit(config) gives mobilenet_d1's new config.json (a dict, or raw text)."""
    target = c.tmp / "r"
    shutil.copytree(c.results_small, target)
    if edit:
        config = target / "mobilenet_d1" / "config.json"
        new = edit(json.loads(config.read_text()))
        config.write_text(new if isinstance(new, str) else json.dumps(new))
    return target


def report_case(target: Path, c: Ctx, needles: tuple[str, ...], *extra: str) -> Case:
    return Case("report", [target, "--out", c.tmp / "rep", *extra], needles)


@case("report/not_a_directory")
def _(c: Ctx) -> Case:
    return report_case(c.blocker, c, ("is not a directory",))


@case("report/no_runs")
def _(c: Ctx) -> Case:
    (c.tmp / "r" / "something").mkdir(parents=True)
    return report_case(c.tmp / "r", c, ("is not a results directory",))


@case("report/results_of_an_older_version")
def _(c: Ctx) -> Case:
    return report_case(results_copy(c, lambda cfg: {**cfg, "results_format": 99}), c,
                       ("written in results format 99", "this code writes 1"))


@case("report/config_not_json")
def _(c: Ctx) -> Case:
    return report_case(results_copy(c, lambda cfg: "{"), c, ("mobilenet_d1", "not valid JSON"))


@case("report/config_missing_key")
def _(c: Ctx) -> Case:
    return report_case(results_copy(c, lambda cfg: {k: v for k, v in cfg.items() if k != "classes"}), c,
                       ("config.json: missing classes",))


@case("report/unknown_run")
def _(c: Ctx) -> Case:
    return report_case(results_copy(c), c, ("no run 'vgg16_d1'",),
                       "--gradcam-run", "vgg16_d1", "--n-boot", "0", "--no-model-figures")


@case("report/none_finished")
def _(c: Ctx) -> Case:
    target = results_copy(c)
    for done in target.glob("*/DONE"):
        done.unlink()
    return report_case(target, c, ("no finished run",))


@case("report/unwritable_out")
def _(c: Ctx) -> Case:
    return Case("report", [results_copy(c), "--out", c.blocker / "rep", "--n-boot", "0", "--no-model-figures"],
                (f"--out {c.blocker}/rep",))


@case("report/test_metrics_not_an_object")
def _(c: Ctx) -> Case:
    target = results_copy(c)
    (target / "mobilenet_d1" / "test_metrics.json").write_text("[0.5, 0.7]")
    return report_case(target, c, (str(target / "mobilenet_d1" / "test_metrics.json"),
                                    "expected a JSON object, got list"), "--n-boot", "0", "--no-model-figures")


@case("report/predictions_without_a_probability_column")
def _(c: Ctx) -> Case:
    target = results_copy(c)
    preds = target / "mobilenet_d1" / "test_predictions.csv"
    pd.read_csv(preds).drop(columns="p_IN").to_csv(preds, index=False)
    return report_case(target, c, (str(preds), "missing column(s) p_IN"), "--n-boot", "0", "--no-model-figures")


@pytest.mark.parametrize("name", list(CASES))
def test_refused_with_one_message_and_nothing_lost(name, tiny_synthetic, results_small, tmp_path, monkeypatch,
                                                   capsys):
    c = Ctx(tmp_path, tiny_synthetic, monkeypatch, results_small)
    got = CASES[name](c)
    roots = [tmp_path, tiny_synthetic, results_small]
    before = snapshot(*roots)
    capsys.readouterr()  # what building the input printed
    rc = MAINS[got.cli]([str(a) for a in got.argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    prefix = PREFIX.get(got.cli, f"data_prep {got.argv[0]}: error: ")
    assert rc == 2 and len(err) == 1 and err[0].startswith(prefix), err
    for needle in got.needles:
        assert needle in err[0], (needle, err[0])
    after = snapshot(*roots)
    assert {p: h for p, h in after.items() if p in before} == before, "a file that existed before was changed"
    new = [Path(p) for p in set(after) - set(before)]
    assert not [p for p in new if p.name in FINISHED or ".partial" in str(p)], new
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name]  # no temporary directory left behind


# ---- not refusals: what is computed anew, what is recorded ----------------------------------------------------------

def test_a_cache_built_for_other_data_is_not_trusted(tiny_synthetic, tmp_path):
    """Dataset B has A's manifest byte for byte but other pixels (as after a re-import with --overwrite): B's
    features are computed anew, not read from A's cache. A cache file that no longer matches its meta.json checksum
    is rebuilt, to the same values."""
    b = copy_dataset(tiny_synthetic, tmp_path / "b")
    for png in (b / "images").glob("*.png"):
        img = load_image(png)
        cv2.imwrite(str(png), (img.max() - img).astype(np.uint16))
    assert (b / "manifest.csv").read_bytes() == (tiny_synthetic / "manifest.csv").read_bytes()
    profile = profiles.get_profile("quick").with_overrides(n_folds=2)
    cache = tmp_path / "cache"

    def features(data: Path) -> np.ndarray:
        """The cached inputs of a CBR-Tiny run on data (its preprocessed views), through the engine's cache lookup."""
        exp = make_experiment(data, profile, 0, tmp_path / "out", "none", use_cache=True, test_fraction=0.25,
                              cache_dir=cache)
        return ModelRun(exp, get_spec("cbr_tiny"), 0).fit_inputs().source.arrays[0]

    def keys() -> list[Path]:
        return sorted(d for d in cache.iterdir() if not d.name.startswith("."))

    feats_a = features(tiny_synthetic)
    (key_a,) = keys()
    meta_a = (key_a / "meta.json").read_bytes()
    feats_b = features(b)
    assert len(keys()) == 2 and (key_a / "meta.json").read_bytes() == meta_a  # B got its own; A's is untouched
    assert not np.allclose(feats_a, feats_b)

    damaged = key_a / "out0.npy"
    damaged.write_bytes(damaged.read_bytes()[:-64])
    np.testing.assert_array_equal(features(tiny_synthetic), feats_a)
    assert (key_a / "meta.json").read_bytes() == meta_a


@pytest.mark.slow
def test_diverging_learning_rates_are_recorded_and_excluded(tiny_synthetic, tmp_path, monkeypatch, capsys):
    """An infinite LR makes the first update NaN (a huge finite one such as 1e38 need not: once the ReLUs die the
    clipped cross-entropy stays finite, so whether it overflows depends on the batch). MobileNetV2 tries inf and 1e-3: the diverged folds stay in the
    history and selection takes 1e-3. MobileNet tries inf only: every LR diverged, so that run fails with one
    message after its one retry, the grid goes on to the next run, and the exit code is 1."""
    diverge = dataclasses.replace(profiles.get_profile("quick"), name="diverge", lr_depth0=(math.inf, 1e-3),
                                  input_sizes={"mobilenet": 32, "mobilenetv2": 32},
                                  per_backbone={"mobilenet": {"lr_depth0": (math.inf,)}})
    monkeypatch.setitem(profiles.PROFILES, "diverge", diverge)
    out = tmp_path / "out"
    rc = benchmark_main(["--backbone", "mobilenet,mobilenetv2", "--depth", "0", "--profile", "diverge", "--data",
                         str(tiny_synthetic), "--out", str(out), *TRAIN, "--test-fraction", "0.25"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 2, err
    assert lines[0] == "mobilenet_d0 select: FAILED (every learning rate diverged (inf)); retrying", lines
    assert lines[1].startswith("mobilenet_d0: FAILED in select: every learning rate diverged (inf)"), lines
    assert str(out / "mobilenet_d0" / "error.txt") in lines[1]
    assert "every learning rate diverged" in (out / "mobilenet_d0" / "error.txt").read_text()
    failed = out / "mobilenet_d0"
    assert not (failed / "DONE").exists() and not (failed / "selection.json").exists()
    jobs = sorted(failed.glob("jobs/cv_*/history.csv"))  # the finished CV jobs are kept, not lost
    assert len(jobs) == 2 and all(pd.read_csv(p)["diverged"].all() for p in jobs)

    ok = out / "mobilenetv2_d0"
    hist = pd.read_csv(ok / "cv_history.csv")
    assert hist.groupby("lr")["diverged"].all().to_dict() == {1e-3: False, math.inf: True}
    assert hist.loc[hist["lr"] == math.inf, "loss"].map(np.isfinite).eq(False).all()
    selection = json.loads((ok / "selection.json").read_text())
    assert selection["lr"] == 1e-3 and selection["diverged_lrs"] == [math.inf] and (ok / "DONE").is_file()
    summary = pd.read_csv(out / "summary.csv").set_index("run")
    assert summary.loc["mobilenet_d0", "status"] == "failed" and summary.loc["mobilenetv2_d0", "status"] == "done"
    assert summary.loc["mobilenetv2_d0", "diverged_lrs"] == math.inf

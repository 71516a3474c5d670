"""`python -m benchmark predict --model RUN_DIR STUDY`: a trained model on a new study, slice by slice.

STUDY is one of
- a dataset directory (holding manifest.csv), already ordered apex -> base. Labels, where the manifest has them,
  are copied into predictions.csv as `label` for comparison;
- a NIfTI volume (.nii / .nii.gz): 3-D (x, y, slice), one stack (frame 0), or 4-D (x, y, slice, time), one stack
  per time point (frame t). Slice k of the file is the image volume[:, :, k] transposed to (row = y, col = x), as
  data_prep's ACDC importer reads NIfTI;
- anything else: a DICOM folder (or file), imported by data_prep's `dicom` source: one stack per cine phase
  (frame = phase, 0 = the first TriggerTime, near end-diastole for an R-wave-triggered cine), apex -> base from
  the DICOM geometry; files that are not one short-axis cine study are refused there.
DICOM and NIfTI studies are imported into a temporary dataset directory, so every slice reaches the network through
benchmark.data.Dataset.make_input, the preprocessing the model was trained with (model.json says which).

Apex -> base order of a NIfTI volume (there are no masks to read the anatomy from): with --apex-first / --base-first,
slice 0 of the file is the apex / the base. Without them the file's affine decides, by data_prep's DICOM rule
(dicom_io.apex_to_base: the apex is the end of the stack furthest along (+x, -y, -z) in LPS coordinates; the
affine's slice axis is turned from RAS into LPS first). A short-axis plane is double oblique, so a slice axis
along a body axis means the file did not keep the scanner geometry (ACDC's NIfTI files carry a placeholder
diag(-1, -1, 1) affine): such a volume, or one without sform/qform, is refused until --apex-first / --base-first
say the order. For DICOM the two flags count "first" in acquisition order, as in `python -m data_prep dicom`.

Written into --out (default: ./<STUDY name>_predictions in the current directory, never beside the study, which
may be read-only shared data), each file atomically (temporary name, then os.replace):
  predictions.csv   one row per slice: patient, frame, slice (0 = apex), n_slices, source, p_<class>...,
                    argmax, monotone (the OAP* IN* OBS* labelling by the decoding model.json records, chosen on
                    the run's validation folds, else the plain monotone decoding: decode.Decoding),
                    label (the manifest's reference label, dataset directories with labels only)
  ranges.json       per stack: first and last IN slice of the monotone labelling and of the argmax (gaps
                    included), n_slices, whether the argmax is already monotone, the report file
  report_<patient>_<frame>.png   per stack (a short hash appended where two stacks' ids make one file name),
                    slices apex -> base in a grid; per slice the network's field of view
                    (the centre crop, windowed), the same with its Grad-CAM, and the class probabilities as bars
                    (OAP #0072B2, IN #009E73, OBS #D55E00); the tag and border give the monotone label, and the
                    argmax where it differs
A directory holding a previous predict output is updated (reports of stacks no longer present are removed); any
other non-empty --out is refused.

Grad-CAM (Selvaraju et al. 2017) is benchmark.gradcam.gradcam_tape on the registry's CAM layer
(models.cam_layer_name), for the argmax class of each slice: the gradient of that class's pre-softmax logit
with respect to the feature map, averaged over space, weights the map's channels; ReLU, zoomed to the input size,
scaled to [0, 1] per slice.

--show opens the same reports in a window (PredictionViewer: left/right or p/n change stack, c toggles Grad-CAM,
q closes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from data_prep import dicom_io
from data_prep.errors import DataPrepError
from data_prep.label import label_colours
from data_prep.manifest import (MANIFEST, Stack, file_sha256, read_dataset_json, read_manifest,
                               write_dataset)

from data_prep import atomic
from .data import Dataset
from .errors import BenchmarkInputError
from .decode import IN, Decoding, in_range
from .preprocess import Preprocessing, crop_resize, window

SLICE_CLASSES = ("OAP", "IN", "OBS")
MODEL_FILES = ("model.keras", "model.json")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
PREDICTIONS, RANGES, REPORT_PREFIX = "predictions.csv", "ranges.json", "report_"
BATCH = 64
DISPLAY_PX = 160        # the network's field of view is shown at this size, whatever the input size
MAX_COLS = 8
CAM_CMAP, CAM_ALPHA = "inferno", 0.45  # perceptually uniform, readable without colour vision
TILE_IN = 1.5           # inches per image tile
DPI = 100


# ---- the trained model --------------------------------------------------------------------------------------

@dataclass
class TrainedModel:
    """A model directory written by the benchmark (protocol.ModelRun._export), loaded."""

    directory: Path
    model: Any                      # keras.Model
    backbone: str
    depth: Any
    classes: tuple[str, ...]
    prep: Preprocessing
    cam_layer: str
    meta: dict[str, Any]
    decoding: Decoding = field(default_factory=Decoding)  # chosen on validation (model.json), else plain monotone
    stack: Any = None                # the stack-context model (stack.py) of a <backbone>_d0+stack run
    with_features: Any = None        # image -> (probabilities, pooled features): what a stack model reads, one pass

    @property
    def name(self) -> str:
        return f"{self.backbone} depth {self.depth}"

    def probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(per-slice class probabilities, pooled features where a stack model reads them) of a batch."""
        if self.with_features is None:
            return np.asarray(self.model(x, training=False)), None
        proba, features = self.with_features(x, training=False)
        return np.asarray(proba), np.asarray(features)


REFERENCE = Path(__file__).resolve().parent / "reference"
REFERENCE_MODEL = REFERENCE / "model"
REFERENCE_SUMS = REFERENCE / "SHA256SUMS"


def check_reference() -> None:
    """The released model's files against their recorded sha256 (a damaged or partial install is refused)."""
    if not REFERENCE_SUMS.is_file():
        raise BenchmarkInputError(f"no released reference model in this installation ({REFERENCE_SUMS} missing); "
                                  f"give --model RUN_DIR")
    for line in REFERENCE_SUMS.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = REFERENCE / name.strip()
        if not path.is_file() or file_sha256(path) != digest:
            raise BenchmarkInputError(f"{path}: does not match its sha256 in {REFERENCE_SUMS} (a damaged "
                                      f"installation?); reinstall the package or give --model RUN_DIR")


def model_directory(path: Path) -> Path:
    """RUN_DIR/model, or the model directory itself when --model names it."""
    return path / "model" if (path / "model").is_dir() else path


def read_model_json(directory: Path) -> tuple[dict[str, Any], Preprocessing]:
    """model.json checked against this code: results format, a backbone it knows, OAP/IN/OBS, the preprocessing."""
    from .layout import RESULTS_FORMAT
    from .registry import get_spec
    for name in MODEL_FILES:
        if not (directory / name).is_file():
            raise BenchmarkInputError(f"{directory / name} not found: --model takes a run directory written by "
                                      f"`python -m benchmark` (RUN_DIR/model/model.keras and model.json; results "
                                      f"copied without weights hold none); without --model, predict uses the "
                                      f"released reference model")
    path = directory / "model.json"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchmarkInputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise BenchmarkInputError(f"{path}: expected a JSON object")
    if meta.get("results_format") != RESULTS_FORMAT:
        raise BenchmarkInputError(
            f"{path}: results_format {meta.get('results_format')!r} is not the format this code reads "
            f"({RESULTS_FORMAT}); use the code version that wrote it ({meta.get('code_version', 'unknown')}) "
            f"or retrain")
    missing = [k for k in ("backbone", "depth", "classes", "preprocessing") if k not in meta]
    if missing:
        raise BenchmarkInputError(f"{path}: missing field(s) {', '.join(missing)}")
    if meta.get("task", "classification") != "classification":
        # stack decoding, IN ranges and Grad-CAM here all read class probabilities alone
        raise BenchmarkInputError(f"{path}: a {meta['task']} model of {meta.get('target')!r}; predict needs a slice "
                                  f"classifier (its model.keras, loaded with Keras, predicts {meta.get('target')!r} "
                                  f"in the column's own units)")
    if tuple(meta["classes"]) != SLICE_CLASSES:
        raise BenchmarkInputError(f"{path}: classes {meta['classes']}; predict needs a slice classifier with "
                                  f"classes {list(SLICE_CLASSES)} (apex -> base order)")
    try:
        get_spec(meta["backbone"])
        prep = Preprocessing.from_key(meta["preprocessing"])
    except KeyError as exc:
        raise BenchmarkInputError(f"{path}: {exc.args[0]}") from exc
    except (TypeError, ValueError) as exc:
        raise BenchmarkInputError(f"{path}: unreadable preprocessing {meta['preprocessing']!r} ({exc})") from exc
    return meta, prep


def check_model(path: str | os.PathLike, timing: dict[str, float]) -> tuple[Path, dict[str, Any], Preprocessing]:
    """The model directory, its model.json and preprocessing, checked before any study is read."""
    directory = model_directory(Path(path))
    if not directory.is_dir():
        raise BenchmarkInputError(f"--model {path}: no such directory")
    t0 = time.perf_counter()
    from .tf_quiet import quiet_tensorflow
    quiet_tensorflow()  # timed here: the TensorFlow import dominates a short run
    timing["tensorflow_import_s"] = time.perf_counter() - t0
    meta, prep = read_model_json(directory)
    return directory, meta, prep


def load_trained(directory: Path, meta: dict[str, Any], prep: Preprocessing) -> TrainedModel:
    import keras
    from .registry import POOLED, get_spec
    from .models import cam_layer_name
    file = directory / "model.keras"
    if not zipfile.is_zipfile(file):
        raise BenchmarkInputError(f"{file}: not a Keras zip archive (truncated or corrupt?)")
    try:
        model = keras.saving.load_model(file, compile=False)
    except Exception as exc:  # zip, HDF5 and deserialisation failures come as many exception types
        raise BenchmarkInputError(f"{file}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
    expected = (prep.input_size, prep.input_size, 3)
    if tuple(model.input_shape[1:]) != expected or model.output_shape[-1] != len(SLICE_CLASSES):
        raise BenchmarkInputError(f"{file}: input {model.input_shape[1:]} / output {model.output_shape[-1:]} do "
                                  f"not match model.json (input {expected}, {len(SLICE_CLASSES)} classes)")
    spec = get_spec(meta["backbone"])
    mismatch = architecture_mismatch(model, spec)
    if mismatch:
        raise BenchmarkInputError(f"{directory / 'model.json'}: says backbone {spec.key}, but {mismatch}; the model "
                                  f"directory's two files do not belong together")
    try:
        decoding = Decoding.from_dict(meta["decoding"]) if "decoding" in meta else Decoding()
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchmarkInputError(f"{directory / 'model.json'}: unreadable decoding {meta['decoding']!r} "
                                  f"({exc})") from None
    stack = with_features = None
    if "stack" in meta:
        stack_file = directory / meta["stack"]["file"]
        try:
            stack = keras.saving.load_model(stack_file, compile=False)
        except Exception as exc:  # as for model.keras: many exception types
            raise BenchmarkInputError(f"{stack_file}: cannot be loaded ({type(exc).__name__}: {exc})") from exc
        with_features = keras.Model(model.input, [model.output, model.get_layer(POOLED).output])
    return TrainedModel(directory, model, spec.key, meta["depth"], SLICE_CLASSES, prep,
                        cam_layer_name(model, spec), meta, decoding, stack, with_features)


def architecture_mismatch(model, spec) -> str | None:
    """Why the loaded network is not one of `spec`'s backbone (None when it is), from layers every such model has:
    a pretrained backbone's depth-1 boundary layer, or a CBR net's conv blocks and their widths."""
    names = {layer.name for layer in model.layers}
    cbr = sorted((n for n in names if re.fullmatch(r"cbr\d+_conv", n)), key=lambda n: int(n[3:-5]))
    if spec.pretrained:
        marker = spec.unfreeze_from or spec.unfreeze_after
        if cbr or marker not in names:
            return f"model.keras has no layer {marker!r}" + (" (it is a CBR network)" if cbr else "")
        return None
    kernel, filters = spec.cbr
    found = [(model.get_layer(n).filters, model.get_layer(n).kernel_size[0]) for n in cbr]
    if found != [(f, kernel) for f in filters]:
        return (f"model.keras's CBR blocks (filters, kernel) are {found}, not {spec.name}'s "
                f"{[(f, kernel) for f in filters]}")
    return None


def predict_batch(trained: TrainedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Per-slice class probabilities, pooled features (stack models) and the Grad-CAM of each image's per-slice
    argmax class (input resolution, [0, 1])."""
    from .gradcam import gradcam_tape
    proba, features = trained.probabilities(x)
    return proba, features, gradcam_tape(trained.model, x, proba.argmax(axis=1), trained.cam_layer)


# ---- the study ----------------------------------------------------------------------------------------------

def study_kind(study: Path) -> str:
    """'dataset', 'nifti' or 'dicom'; a missing or empty STUDY is an error."""
    if not study.exists():
        raise DataPrepError(f"STUDY {study} not found")
    if study.is_file() and study.name.lower().endswith(NIFTI_SUFFIXES):
        return "nifti"
    if study.is_dir() and (study / MANIFEST).is_file():
        return "dataset"
    dicom_io.list_files(study, "STUDY")
    return "dicom"


def study_name(study: Path) -> str:
    name = study.resolve().name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return name


def safe_id(text: str) -> str:
    """A patient or frame id as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "x"


def nifti_order(img, n: int, override: str | None, where: str) -> tuple[list[int], dict[str, Any], list[str]]:
    """File slice indices apex -> base, the evidence and warnings (see the module docstring)."""
    if override is not None:
        order = list(range(n)) if override == "apex_first" else list(range(n))[::-1]
        return order, {"decided_by": f"--{override.replace('_', '-')}", "file_slice_0": override.split("_")[0]}, []
    refuse = (f"{where}: the file does not place its slices in the body (%s), so apex and base cannot be told "
              f"apart; pass --apex-first or --base-first (first = slice 0 of the file)")
    header = img.header
    if int(header.get("sform_code", 0)) == 0 and int(header.get("qform_code", 0)) == 0:
        raise DataPrepError(refuse % "no sform or qform")
    axis = np.asarray(img.affine[:3, 2], dtype=np.float64)
    step = float(np.linalg.norm(axis))
    if step == 0:
        raise DataPrepError(refuse % "zero slice axis in the affine")
    normal_ras = axis / step
    if np.abs(normal_ras).max() >= dicom_io.SAME_PLANE_COS:
        raise DataPrepError(refuse % f"slice axis {np.round(normal_ras, 3).tolist()} (RAS) lies along a body axis; "
                                     f"a short-axis plane is double oblique")
    normal_lps = normal_ras * np.array([-1.0, -1.0, 1.0])
    return dicom_io.apex_to_base([k * step for k in range(n)], normal_lps, list(range(n)), None, where)


def nifti_stacks(path: Path, patient: str, override: str | None) -> tuple[list[Stack], list[str], int]:
    """The stacks of a 3-D or 4-D NIfTI volume, apex -> base; also the number of time points."""
    import nibabel as nib
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as exc:
        raise DataPrepError(f"{path}: unreadable or truncated NIfTI file ({exc})") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise DataPrepError(f"{path}: expected a 3-D (x, y, slice) or 4-D (x, y, slice, time) volume, got shape "
                            f"{data.shape}")
    if data.shape[2] < 2:
        raise DataPrepError(f"{path}: not short-axis-like: one slice (a short-axis stack needs several)")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise DataPrepError(f"{path}: the volume contains NaN or infinite values")
    n = data.shape[2]
    order, evidence, notes = nifti_order(img, n, override, str(path))
    zooms = [float(z) for z in img.header.get_zooms()]
    volumes = [data] if data.ndim == 3 else [data[..., t] for t in range(data.shape[3])]
    stacks = []
    for t, vol in enumerate(volumes):
        where = "" if data.ndim == 3 else f", time {t}"
        stacks.append(Stack(patient=patient, frame=str(t), labels=[""] * n, pixel_spacing_mm=zooms[0],
                            images=[np.ascontiguousarray(vol[:, :, k].T) for k in order],
                            sources=[f"{path.name}[slice {k}{where}]" for k in order], orientation=evidence))
    return stacks, notes, len(volumes)


def import_study(study: Path, kind: str, out: Path, args: argparse.Namespace) -> Path:
    """A DICOM or NIfTI study as an (unlabelled) dataset directory at out."""
    if kind == "dicom":
        from data_prep import dicom
        return dicom.run(argparse.Namespace(src=str(study), out=str(out), patient=args.patient, apex=args.apex,
                                            allow_gaps=args.allow_gaps, overwrite=False))
    patient = dicom_io.check_patient_id(args.patient) if args.patient else safe_id(study_name(study))
    stacks, notes, n_times = nifti_stacks(study, patient, args.apex)
    print(f"{study.name}: {len(stacks[0].images)} slices x {n_times} time point(s)")
    dicom_io.print_warnings("nifti", notes)
    return write_dataset(out, "nifti", stacks, source=str(study), warnings=notes,
                         options={"apex": args.apex or "geometry (affine)"})


def study_dataset(root: Path) -> Dataset:
    """Every row of a dataset directory (labelled or not) as a Dataset, for Dataset.make_input."""
    rows = read_manifest(root).reset_index(drop=True)
    ds = Dataset(root, rows, SLICE_CLASSES, file_sha256(root / MANIFEST))
    ds.check_images()
    return ds


# ---- prediction ---------------------------------------------------------------------------------------------

@dataclass
class StackPrediction:
    """One (patient, frame) stack, slices apex -> base."""

    patient: str
    frame: str
    name: str                       # how the stack is printed and titled
    rows: np.ndarray                # row indices into the Dataset
    slices: np.ndarray              # manifest slice numbers (0 = apex)
    proba: np.ndarray               # (n, classes)
    monotone: np.ndarray
    views: list[np.ndarray]         # the network's field of view, windowed to [0, 1], DISPLAY_PX square
    cams: list[np.ndarray]          # Grad-CAM at input resolution, [0, 1]
    reference: list[str] | None = None
    report: str = ""

    @property
    def argmax(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @property
    def argmax_is_monotone(self) -> bool:
        return bool(np.all(np.diff(self.argmax) >= 0))

    def in_slices(self, labels: np.ndarray) -> dict[str, int] | None:
        span = in_range(labels, IN)
        if span is None:
            return None
        return {"first": int(self.slices[span[0]]), "last": int(self.slices[span[1]]),
                "n_in": int((labels == IN).sum())}

    @property
    def every_slice_in(self) -> dict[str, int]:
        """The baseline's answer: the whole stack IN."""
        return self.in_slices(np.full(len(self.slices), IN))

    def summary(self) -> str:
        n = len(self.slices)
        mono, arg, every = self.in_slices(self.monotone), self.in_slices(self.argmax), self.every_slice_in
        text = (f"{self.name}: IN slices {mono['first']}-{mono['last']} of {n} (decoded)" if mono else
                f"{self.name}: no IN slice of {n} (decoded)")
        text += f"; argmax {arg['first']}-{arg['last']}" if arg else "; argmax no IN"
        text += "" if self.argmax_is_monotone else " (argmax not in OAP-IN-OBS order)"
        return text + f"; every slice IN (baseline): {every['first']}-{every['last']}"


def frame_key(frame: str) -> tuple[int, Any]:
    """Numeric frames (cine phases) in numeric order, named ones (ED, ES) after them by name."""
    return (0, int(frame)) if str(frame).isdigit() else (1, str(frame))


def stack_names(keys: Sequence[tuple[str, str]], kind: str) -> dict[tuple[str, str], str]:
    what = {"dicom": "phase ", "nifti": "frame "}.get(kind, "")
    several = len({p for p, _ in keys}) > 1
    return {(p, f): f"{p}/{what}{f}" if several else f"{what}{f}" for p, f in keys}


def report_names(keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """report_<patient>_<frame>.png per stack. Ids that make the same file name (`a b` and `a_b`, or `A` and `a` on
    a case-insensitive disk) get a short hash of the real ids appended, so no report overwrites another."""
    base = {k: f"{safe_id(k[0])}_{safe_id(k[1])}" for k in keys}
    uses: dict[str, int] = {}
    for b in base.values():
        uses[b.lower()] = uses.get(b.lower(), 0) + 1
    out = {}
    for k, b in base.items():
        if uses[b.lower()] > 1:
            b += "_" + hashlib.sha256(json.dumps([str(k[0]), str(k[1])]).encode()).hexdigest()[:8]
        out[k] = f"{REPORT_PREFIX}{b}.png"
    return out


def predict_study(trained: TrainedModel, ds: Dataset, kind: str, timing: dict[str, float]) -> list[StackPrediction]:
    """Probabilities, monotone labels and Grad-CAMs of every slice of every stack."""
    rows = ds.rows
    prep = trained.prep
    n = len(rows)
    proba = np.zeros((n, len(trained.classes)), dtype=np.float64)
    cams: list[np.ndarray] = [np.zeros(0)] * n
    views: list[np.ndarray] = [np.zeros(0)] * n
    timing["inputs_s"] = timing["predict_cam_s"] = 0.0
    features: list[np.ndarray] = []
    for start in tqdm(range(0, n, BATCH), desc="predicting", unit="batch", disable=None, file=sys.stderr):
        idx = range(start, min(start + BATCH, n))
        t0 = time.perf_counter()
        x = ds.make_inputs(idx, prep)
        for i in idx:  # what the network sees: the windowed centre crop of the slice itself
            views[i] = crop_resize(window(ds.native(i), prep.window), prep.crop_fraction, DISPLAY_PX) / 255.0
        t1 = time.perf_counter()
        p, f, c = predict_batch(trained, x)
        timing["inputs_s"] += t1 - t0
        timing["predict_cam_s"] += time.perf_counter() - t1
        proba[start:start + len(idx)] = p
        if f is not None:
            features.append(f)
        cams[start:start + len(idx)] = list(c)
    t0 = time.perf_counter()
    if trained.stack is not None:  # the stack model relabels every slice from the whole stack's features
        from .stack import predict_stacks
        every = np.arange(n)
        proba = predict_stacks(trained.stack, ds, every, np.concatenate(features), every, len(trained.classes))
    monotone = trained.decoding.apply(proba, rows)
    timing["decode_s"] = time.perf_counter() - t0
    has_labels = "label" in rows and (rows["label"].astype(str) != "").any()
    keys = sorted(rows.groupby(["patient", "frame"], sort=False).groups, key=lambda k: (str(k[0]), frame_key(k[1])))
    names = stack_names(keys, kind)
    reports = report_names(keys)
    out = []
    for key in keys:
        members = rows.index[(rows["patient"] == key[0]) & (rows["frame"] == key[1])].to_numpy()
        members = members[np.argsort(rows["slice"].to_numpy()[members], kind="stable")]
        out.append(StackPrediction(
            patient=str(key[0]), frame=str(key[1]), name=names[key], rows=members,
            slices=rows["slice"].to_numpy()[members], proba=proba[members], monotone=monotone[members],
            views=[views[i] for i in members], cams=[cams[i] for i in members],
            reference=[str(v) for v in rows["label"].to_numpy()[members]] if has_labels else None,
            report=reports[key]))
    return out


def predictions_frame(stacks: Sequence[StackPrediction], ds: Dataset, classes: Sequence[str]) -> pd.DataFrame:
    parts = []
    for s in stacks:
        part = pd.DataFrame({"patient": s.patient, "frame": s.frame, "slice": s.slices,
                             "n_slices": len(s.slices), "source": ds.rows["source"].to_numpy()[s.rows]})
        for c, name in enumerate(classes):
            part[f"p_{name}"] = s.proba[:, c]
        part["argmax"] = [classes[k] for k in s.argmax]
        part["monotone"] = [classes[k] for k in s.monotone]
        if s.reference is not None:
            part["label"] = s.reference
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def ranges_document(stacks: Sequence[StackPrediction], trained: TrainedModel, study: Path, kind: str,
                    root: Path) -> dict[str, Any]:
    return {
        "study": str(study),
        "study_kind": kind,
        "model": {"directory": str(trained.directory), "backbone": trained.backbone, "depth": trained.depth,
                  "code_version": trained.meta.get("code_version"), "decoding": trained.decoding.to_dict()},
        "slice_numbering": "0 = most apical slice; first/last are inclusive; null = no IN slice",
        "orientation": read_dataset_json(root).get("orientation", []) if kind != "dataset" else "manifest order",
        "stacks": [{"patient": s.patient, "frame": s.frame, "n_slices": len(s.slices),
                    "monotone": s.in_slices(s.monotone), "argmax": s.in_slices(s.argmax),
                    "every_slice_in": s.every_slice_in,
                    "argmax_is_monotone": s.argmax_is_monotone, "report": s.report} for s in stacks],
    }


# ---- reports and viewer -------------------------------------------------------------------------------------

def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols): at most MAX_COLS slices a row, rows as even as possible."""
    rows = math.ceil(n / MAX_COLS)
    return rows, math.ceil(n / rows)


def cam_image(cam: np.ndarray, size: int) -> np.ndarray:
    return np.clip(cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def figure_size(n: int, mode: str) -> tuple[float, float]:
    rows, cols = grid_shape(n)
    panels = 2 if mode == "both" else 1
    return cols * TILE_IN + 0.6, rows * (panels + 0.6) * TILE_IN + 1.0


def draw_stack(fig, stack: StackPrediction, classes: Sequence[str], mode: str, title: str) -> None:
    """Draw one stack on fig: per slice, mode 'both' (image row and Grad-CAM row), 'image' or 'cam', then bars."""
    fig.clear()
    colours = label_colours(classes)
    panels = ["image", "cam"] if mode == "both" else [mode]
    n = len(stack.slices)
    rows, cols = grid_shape(n)
    per_row = len(panels) + 1
    gs = fig.add_gridspec(rows * per_row, cols, height_ratios=([1.0] * len(panels) + [0.45]) * rows,
                          left=0.05, right=0.99, top=1 - 0.75 / fig.get_figheight(),
                          bottom=0.3 / fig.get_figheight(), hspace=0.35, wspace=0.08)
    argmax = stack.argmax
    for k in range(n):
        r, c = divmod(k, cols)
        label = classes[stack.monotone[k]]
        for j, panel in enumerate(panels):
            ax = fig.add_subplot(gs[r * per_row + j, c])
            ax.imshow(stack.views[k], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            if panel == "cam":
                ax.imshow(cam_image(stack.cams[k], DISPLAY_PX), cmap=CAM_CMAP, alpha=CAM_ALPHA, vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colours[label])
                spine.set_linewidth(2.5)
            if c == 0:
                ax.set_ylabel("Grad-CAM" if panel == "cam" else "image", fontsize=7)
            if j == 0:
                tag = f"{stack.slices[k]}: {label}"
                if argmax[k] != stack.monotone[k]:
                    tag += f" (argmax {classes[argmax[k]]})"
                if stack.reference is not None and stack.reference[k]:
                    tag += f"\nref {stack.reference[k]}"
                ax.set_title(tag, color=colours[label], fontsize=7, fontweight="bold", pad=2)
        bx = fig.add_subplot(gs[r * per_row + len(panels), c])
        bx.bar(range(len(classes)), stack.proba[k], color=[colours[name] for name in classes], width=0.8)
        bx.set_ylim(0, 1)
        bx.set_xticks(range(len(classes)), classes, fontsize=6)
        bx.set_yticks([0, 0.5, 1] if c == 0 else [])
        bx.tick_params(axis="both", labelsize=6, length=2, pad=1)
    fig.suptitle(title, fontsize=9, y=1 - 0.12 / fig.get_figheight(), va="top")


def stack_title(stack: StackPrediction, trained: TrainedModel, extra: str = "") -> str:
    cam = "the per-slice model's argmax class" if trained.stack is not None else "the argmax class"
    return (f"{stack.summary()}   [model: {trained.name}]\n"
            f"apex -> base; tag and border: decoded label; bars: class probabilities; Grad-CAM of {cam}{extra}")


def write_report(path: Path, stack: StackPrediction, trained: TrainedModel) -> Path:
    from matplotlib.figure import Figure
    fig = Figure(figsize=figure_size(len(stack.slices), "both"), dpi=DPI)
    draw_stack(fig, stack, trained.classes, "both", stack_title(stack, trained))
    return atomic.atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))


class PredictionViewer:
    """The reports in a window, one stack at a time: left/right (or p/n) change stack, c toggles Grad-CAM,
    q closes. `fig` defaults to a new pyplot figure."""

    def __init__(self, stacks: Sequence[StackPrediction], trained: TrainedModel, fig=None):
        if not stacks:
            raise DataPrepError("nothing to show: no stacks")
        import matplotlib.pyplot as plt
        self.stacks, self.trained = list(stacks), trained
        self.index, self.show_cam = 0, False
        longest = max(len(s.slices) for s in self.stacks)
        self.fig = fig if fig is not None else plt.figure(figsize=figure_size(longest, "image"))
        manager = self.fig.canvas.manager
        if manager is not None and getattr(manager, "key_press_handler_id", None) is not None:
            # matplotlib's navigation keys (c and left = back, q = quit) clash with ours
            self.fig.canvas.mpl_disconnect(manager.key_press_handler_id)
            manager.key_press_handler_id = None
        self.fig.canvas.mpl_connect("key_press_event", self._on_key)
        self.draw()

    def draw(self) -> None:
        stack = self.stacks[self.index]
        extra = (f"\nstack {self.index + 1}/{len(self.stacks)}: left/right change stack, c Grad-CAM "
                 f"{'off' if self.show_cam else 'on'}, q close")
        draw_stack(self.fig, stack, self.trained.classes, "cam" if self.show_cam else "image",
                   stack_title(stack, self.trained, extra))
        self.fig.canvas.draw_idle()

    def _on_key(self, event) -> None:
        if event.key in ("right", "n", "left", "p"):
            step = 1 if event.key in ("right", "n") else -1
            target = min(max(self.index + step, 0), len(self.stacks) - 1)
            if target != self.index:
                self.index = target
                self.draw()
        elif event.key == "c":
            self.show_cam = not self.show_cam
            self.draw()
        elif event.key == "q":
            import matplotlib.pyplot as plt
            plt.close(self.fig)


def check_interactive() -> None:
    import matplotlib.pyplot as plt
    fig = plt.figure()
    interactive = type(fig.canvas).required_interactive_framework is not None
    plt.close(fig)
    if not interactive:
        raise DataPrepError(f"--show: matplotlib backend {plt.get_backend()!r} cannot open a window (no "
                            f"display?); set MPLBACKEND to an interactive one, e.g. MPLBACKEND=TkAgg")


# ---- outputs and CLI ----------------------------------------------------------------------------------------

def check_out(out: Path) -> None:
    """--out may be new, empty, or a previous predict output; anything else is refused before any work."""
    if out.exists() and not out.is_dir():
        raise DataPrepError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / PREDICTIONS).is_file():
        raise DataPrepError(f"--out {out} already holds other files; choose a new or empty directory "
                            f"(a previous predict output is updated in place)")
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise DataPrepError(f"--out {out}: {existing} is not a writable directory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark predict",
        description="Classify every slice of a short-axis study as OAP / IN / OBS with a trained model, decode "
                    "one contiguous IN range per stack, and write predictions.csv, ranges.json and a PNG report "
                    "per stack (images, Grad-CAM, probability bars).",
        epilog="STUDY: a DICOM folder (data_prep's dicom importer: one stack per cine phase, apex -> base from "
               "the geometry), a NIfTI volume .nii/.nii.gz (3-D, or 4-D with time; apex -> base from the affine, "
               "or --apex-first/--base-first = slice 0 of the file), or a dataset directory (manifest.csv). "
               "Exit code 2 with one message for a bad model directory or study.")
    p.add_argument("study", metavar="STUDY", type=Path, help="DICOM folder, NIfTI file or dataset directory")
    p.add_argument("--model", type=Path, metavar="RUN_DIR",
                   help="a model run directory of `python -m benchmark` (holding model/model.keras and "
                        "model/model.json), or that model/ directory itself; default: the released reference "
                        "model shipped with the package (its model card: benchmark/reference/MODEL_CARD.md)")
    p.add_argument("--out", type=Path, help="output directory (default: ./<STUDY name>_predictions)")
    dicom_io.add_apex_arguments(p, first="first slice (DICOM: in acquisition order; NIfTI: slice 0 of the file)")
    p.add_argument("--patient", help="patient id in the outputs (DICOM default: dcm + a hash of PatientID and "
                                     "StudyInstanceUID; NIfTI default: the file name)")
    p.add_argument("--allow-gaps", action="store_true", help="DICOM: predict a stack with a missing slice position")
    p.add_argument("--show", action="store_true", help="open the reports in a window (left/right: stack, "
                                                        "c: Grad-CAM, q: close)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (BenchmarkInputError, DataPrepError) as exc:
        print(f"benchmark predict: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    study = args.study
    kind = study_kind(study)
    if kind == "dataset" and (args.apex or args.patient or args.allow_gaps):
        raise DataPrepError("--apex-first / --base-first / --patient / --allow-gaps apply to DICOM and NIfTI "
                            "studies; a dataset directory is already ordered apex -> base")
    out = args.out or Path.cwd() / f"{study_name(study)}_predictions"
    check_out(out)
    if args.show:
        check_interactive()
    timing: dict[str, float] = {}
    if args.model is None:
        check_reference()
    model_dir, meta, prep = check_model(args.model or REFERENCE_MODEL, timing)
    with tempfile.TemporaryDirectory(prefix="benchmark-predict-") as tmp:
        # the study is read before the model is loaded, so a bad study is refused without waiting for the load
        t0 = time.perf_counter()
        root = study if kind == "dataset" else import_study(study, kind, Path(tmp) / "study", args)
        ds = study_dataset(root)
        timing["read_study_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        trained = load_trained(model_dir, meta, prep)
        timing["model_load_s"] = time.perf_counter() - t0
        stacks = predict_study(trained, ds, kind, timing)
        frame = predictions_frame(stacks, ds, trained.classes)
        ranges = ranges_document(stacks, trained, study, kind, root)
    atomic.write_csv(out / PREDICTIONS, frame)
    atomic.write_json(out / RANGES, ranges)
    t0 = time.perf_counter()
    for stack in tqdm(stacks, desc="reports", unit="stack", disable=None, file=sys.stderr):
        write_report(out / stack.report, stack, trained)
    timing["reports_s"] = time.perf_counter() - t0
    current = {s.report for s in stacks}
    for old in out.glob(f"{REPORT_PREFIX}*.png"):
        if old.name not in current:
            old.unlink()
    n_slices = sum(len(s.slices) for s in stacks)
    print(f"{trained.name} on {study} ({kind}): {len(stacks)} stack(s), {n_slices} slices; slice 0 = apex")
    for stack in stacks:
        print(stack.summary())
    per_stack = (timing["inputs_s"] + timing["predict_cam_s"] + timing["decode_s"]) / len(stacks)
    print("timing: " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in timing.items())
          + f"; per stack (inputs + predict + CAM + decode) {per_stack:.2f} s; "
            f"total {time.perf_counter() - t_start:.1f} s")
    print(f"wrote {out / PREDICTIONS}, {out / RANGES} and {len(current)} report(s) in {out}")
    if args.show:
        import matplotlib.pyplot as plt
        PredictionViewer(stacks, trained)
        plt.show()
    return 0

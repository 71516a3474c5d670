"""The trained model predict runs: a model directory written by the benchmark (protocol.export_model) or the
released reference model under benchmark/reference/, checked before any study is read and loaded after."""
from __future__ import annotations

import json
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_prep import atomic
from data_prep.manifest import file_sha256

from ..decode import Decoding
from ..errors import BenchmarkInputError
from ..layout import MODEL_DIR, MODEL_FILE, MODEL_JSON, check_format, model_dir
from ..preprocess import Preprocessing

SLICE_CLASSES = ("OAP", "IN", "OBS")
REFERENCE = Path(__file__).resolve().parent.parent / "reference"
REFERENCE_MODEL = REFERENCE / MODEL_DIR
SUMS = "SHA256SUMS"                 # sha256 and path of each released file, as sha256sum writes them


@dataclass
class TrainedModel:
    """A model directory, loaded."""

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
    range_model: Any = None          # a segmentation run's (segment.RangeModel): `model` is then its segmenter

    @property
    def segments(self) -> bool:
        return self.range_model is not None

    @property
    def name(self) -> str:
        return f"{self.backbone} depth {self.depth}"

    def probabilities(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(per-slice class probabilities, pooled features where a stack model reads them) of a batch."""
        if self.with_features is None:
            return np.asarray(self.model(x, training=False)), None
        proba, features = self.with_features(x, training=False)
        return np.asarray(proba), np.asarray(features)


def check_reference(root: Path = REFERENCE) -> None:
    """The released model's files against their recorded sha256 (a damaged or partial install is refused)."""
    sums = root / SUMS
    if not sums.is_file():
        raise BenchmarkInputError(f"no released reference model in this installation ({sums} missing); "
                                  f"give --model RUN_DIR")
    for line in sums.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        path = root / name.strip()
        if not path.is_file() or file_sha256(path) != digest:
            raise BenchmarkInputError(f"{path}: does not match its sha256 in {sums} (a damaged "
                                      f"installation?); reinstall the package or give --model RUN_DIR")


def model_directory(path: Path) -> Path:
    """RUN_DIR/model, or the model directory itself when --model names it."""
    return model_dir(path) if model_dir(path).is_dir() else path


def existing_model_directory(path: Path) -> Path:
    """model_directory of --model, refused when there is no such directory."""
    directory = model_directory(path)
    if not directory.is_dir():
        raise BenchmarkInputError(f"--model {path}: no such directory")
    return directory


def import_tensorflow() -> float:
    """Import TensorFlow quietly; the seconds it took (timed apart: the import dominates a short run)."""
    t0 = time.perf_counter()
    from ..tf_quiet import quiet_tensorflow
    quiet_tensorflow()
    return time.perf_counter() - t0


PREDICT_NEEDS = (f"--model takes a run directory written by `python -m benchmark` (RUN_DIR/{MODEL_DIR}/{MODEL_FILE} "
                 f"and {MODEL_JSON}; results copied without weights hold none); without --model, predict uses the "
                 f"released reference model")


def read_model_json(directory: Path, needs: str = PREDICT_NEEDS) -> tuple[dict[str, Any], Preprocessing]:
    """model.json checked against this code: results format, a backbone it knows, OAP/IN/OBS, the preprocessing.
    `needs`: what the command takes, said when the model's files are missing."""
    from ..registry import get_spec
    for name in (MODEL_FILE, MODEL_JSON):
        if not (directory / name).is_file():
            raise BenchmarkInputError(f"{directory / name} not found: {needs}")
    path = directory / MODEL_JSON
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchmarkInputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise BenchmarkInputError(f"{path}: expected a JSON object")
    check_format(path, meta, fix=f"use the code version that wrote it ({meta.get('code_version', 'unknown')}) "
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


def load_keras(file: Path):
    import keras
    why = atomic.damage(file)
    if why:  # Keras reads a cut archive as "File not found"
        raise BenchmarkInputError(f"{file} is damaged ({why}); a run's model is rebuilt by running "
                                  f"`python -m benchmark` again with the --out that made it")
    try:
        return keras.saving.load_model(file, compile=False)
    except Exception as exc:  # zip, HDF5 and deserialisation failures come as many exception types
        raise BenchmarkInputError(f"{file}: cannot be loaded ({type(exc).__name__}: {exc})") from exc


def load_classifier(file: Path, prep: Preprocessing):
    """model.keras, refused unless its input and output are those model.json describes."""
    if not zipfile.is_zipfile(file):
        raise BenchmarkInputError(f"{file}: not a Keras zip archive (truncated or corrupt?)")
    model = load_keras(file)
    expected = (prep.input_size, prep.input_size, 3)
    if tuple(model.input_shape[1:]) != expected or model.output_shape[-1] != len(SLICE_CLASSES):
        raise BenchmarkInputError(f"{file}: input {model.input_shape[1:]} / output {model.output_shape[-1:]} do "
                                  f"not match model.json (input {expected}, {len(SLICE_CLASSES)} classes)")
    return model


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


def read_decoding(meta: dict[str, Any], path: Path) -> Decoding:
    """The decoding model.json records, else the plain monotone one."""
    try:
        return Decoding.from_dict(meta["decoding"]) if "decoding" in meta else Decoding()
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchmarkInputError(f"{path}: unreadable decoding {meta['decoding']!r} ({exc})") from None


def read_range_model(directory: Path, meta: dict[str, Any]):
    """A segmentation run's range model (segment.RangeModel) from the file model.json names."""
    from ..segment import RangeModel
    path = directory / str(meta.get("range_model", ""))
    try:
        return RangeModel.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BenchmarkInputError(f"{path}: unreadable range model of a segmentation run ({exc})") from exc


def with_pooled_features(model):
    """The classifier giving (probabilities, pooled features) in one pass: what a stack model reads."""
    import keras
    from ..registry import POOLED
    return keras.Model(model.input, [model.output, model.get_layer(POOLED).output])


def load_trained(directory: Path, meta: dict[str, Any], prep: Preprocessing) -> TrainedModel:
    from ..models import cam_layer_name
    from ..registry import get_spec
    model = load_classifier(directory / MODEL_FILE, prep)
    spec = get_spec(meta["backbone"])
    if meta.get("kind") == "segment":
        return TrainedModel(directory, model, spec.key, meta["depth"], SLICE_CLASSES, prep, "", meta,
                            read_decoding(meta, directory / MODEL_JSON), range_model=read_range_model(directory, meta))
    mismatch = architecture_mismatch(model, spec)
    if mismatch:
        raise BenchmarkInputError(f"{directory / MODEL_JSON}: says backbone {spec.key}, but {mismatch}; the model "
                                  f"directory's two files do not belong together")
    decoding = read_decoding(meta, directory / MODEL_JSON)
    stack = with_features = None
    if "stack" in meta:
        stack = load_keras(directory / meta["stack"]["file"])
        with_features = with_pooled_features(model)
    return TrainedModel(directory, model, spec.key, meta["depth"], SLICE_CLASSES, prep,
                        cam_layer_name(model, spec), meta, decoding, stack, with_features)

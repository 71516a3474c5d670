"""`python -m benchmark export RUN`: a run's trained model as a TensorFlow SavedModel or ONNX file, with an export card.

The exported graph is the Keras model alone: it takes the preprocessed input (input_size² x 3, float32) and returns
the class probabilities. Everything before that (windowing, crop, resize, channels, the backbone's preprocess_input)
happens outside the graph, so export_card.json writes it down exactly: `preprocessing` holds model.json's record
(the fields of benchmark.preprocess.Preprocessing that `predict` reads), `preprocessing_steps` the same in words, in
the order applied. Classification models only, as for `predict`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from .layout import MODEL_FILE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FORMATS = {"savedmodel": "tf_saved_model", "onnx": "onnx"}
CARD = "export_card.json"
# benchmark.preprocess.backbone_preprocess in words, for x in [0, 255] with channels R, G, B
MODE_STEPS = {
    "tf": "x / 127.5 - 1",
    "unit": "x / 255",
    "caffe": "channels reversed to B, G, R, then minus (103.939, 116.779, 123.68)",
    "torch": "(x / 255 - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225) per channel R, G, B",
}


def preprocessing_steps(prep) -> list[str]:
    """The steps of benchmark.preprocess.make_input (rotation is training-only), numbers included."""
    lo, hi = prep.window
    channels = ("the grey slice copied to all three channels" if prep.input_kind == "2d" else
                "three slices as channels: apex-side neighbour, the slice, base-side neighbour (a stack's end "
                "repeats the slice)")
    return [
        f"window: per slice, the {lo:g}th and {hi:g}th intensity percentiles (numpy, linear) map linearly to 0 "
        f"and 255, clipped (float32; a slice whose two percentiles are equal becomes all 0)",
        f"crop: the centred {prep.crop_fraction:g} of each axis (round(side * {prep.crop_fraction:g}) pixels)",
        f"resize: to {prep.input_size} x {prep.input_size} (OpenCV INTER_AREA where the crop is taller than "
        f"{prep.input_size}, else INTER_LINEAR)",
        f"channels: {channels}",
        f"preprocess_input ({prep.mode}): {MODE_STEPS[prep.mode]}",
    ]


def export(run: Path, fmt: str, out: Path | None = None) -> Path:
    """Write the export of RUN's model (RUN/model or a model directory) and its card; returns the export's path."""
    import keras

    from .errors import BenchmarkInputError
    from .predict.load import load_keras, model_directory, read_model_json
    directory = model_directory(run)
    meta, prep = read_model_json(directory, needs="export takes a run directory of `python -m benchmark` that holds "
                                                  "its trained model (results copied without weights hold none)")
    out = out or directory.parent / f"export_{fmt}"
    if out.exists():
        raise BenchmarkInputError(f"--out {out} exists; remove it or give another --out")
    model = load_keras(directory / MODEL_FILE)
    target = out / "model.onnx" if fmt == "onnx" else out / "savedmodel"
    out.mkdir(parents=True)
    try:
        # explicit: a loaded model has never been called, which Keras' ONNX export otherwise refuses
        signature = [keras.InputSpec(shape=(None, prep.input_size, prep.input_size, 3), dtype="float32")]
        model.export(str(target), format=FORMATS[fmt], verbose=False, input_signature=signature)
    except BaseException as exc:  # a half-written export would block the rerun (--out exists)
        shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, ImportError):  # ONNX from TensorFlow needs tf2onnx and onnx, which it does not bring
            raise BenchmarkInputError(f"--format onnx needs tf2onnx and onnx: pip install "
                                      f"\"cardiac-slice-benchmark[onnx]\" ({exc})") from None
        raise
    card = {
        "format": fmt, "path": target.name, "endpoint": "serve" if fmt == "savedmodel" else None,
        "source": {"model": str(directory / MODEL_FILE),
                   "sha256": hashlib.sha256((directory / MODEL_FILE).read_bytes()).hexdigest()},
        **{k: meta.get(k) for k in ("backbone", "depth", "classes", "outputs", "code_version")},
        "input": {"shape": [None, prep.input_size, prep.input_size, 3], "dtype": "float32",
                  "layout": "batch, height, width, channels"},
        "preprocessing": prep.to_dict(),
        "preprocessing_steps": preprocessing_steps(prep),
        "keras": keras.__version__,
    }
    (out / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark export",
                                description="Export a run's trained model (RUN/model/model.keras) for serving, with "
                                            "an export card (export_card.json) stating the input preprocessing.")
    p.add_argument("run", type=Path, help="run directory (OUT/<backbone>_d<depth>) or its model/ directory")
    p.add_argument("--format", choices=list(FORMATS), default="savedmodel",
                   help="savedmodel (TensorFlow SavedModel, endpoint 'serve'; default) or onnx (pip install "
                        "'.[onnx]')")
    p.add_argument("--out", type=Path, help="where the export goes (default RUN/export_<format>)")
    args = p.parse_args(argv)
    from .errors import BenchmarkInputError
    from .tf_quiet import quiet_tensorflow
    try:
        quiet_tensorflow()
        target = export(args.run, args.format, args.out)
    except BenchmarkInputError as exc:
        print(f"benchmark export: error: {exc}", file=sys.stderr)
        return 2
    print(f"exported: {target} (card: {target.parent / CARD})")
    return 0

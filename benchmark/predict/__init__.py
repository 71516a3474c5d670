"""`python -m benchmark predict [--model RUN_DIR] STUDY`: a trained model on a new study, slice by slice. Without
--model it runs the released reference model (benchmark/reference/, its model card MODEL_CARD.md).

    load.py      the model directory or the released reference model, model.json checked, the model loaded
    study.py     the study (DICOM folder, NIfTI volume or dataset directory) as a dataset directory
    network.py   probabilities and Grad-CAM of every slice, the stack model, the decoding into labels
    decide.py    per stack: labels and IN ranges beside the argmax's and the every-slice-IN baseline's
    outputs.py   what is written into --out (predictions.csv, ranges.json, reports) and which --out is accepted
    draw.py      the PNG report of a stack
    viewer.py    --show: the reports in a window
    cli.py       the command line
"""
from .cli import main
from .load import model_directory, read_model_json
from .outputs import REPORT_PREFIX, report_names

__all__ = ["main", "model_directory", "read_model_json", "REPORT_PREFIX", "report_names"]

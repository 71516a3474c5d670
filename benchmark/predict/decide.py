"""From per-slice probabilities to what predict reports: labels per stack, apex -> base, their IN ranges beside
the argmax's and the every-slice-IN baseline's, as predictions.csv rows and the ranges.json document."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data import Dataset
from ..decode import IN, in_range
from .load import TrainedModel
from .outputs import report_names


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
    views: list[np.ndarray]         # the network's field of view, windowed to [0, 1], draw.DISPLAY_PX square
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


def stack_keys(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(patient, frame) of every stack, patients by name, frames by frame_key."""
    return sorted(rows.groupby(["patient", "frame"], sort=False).groups, key=lambda k: (str(k[0]), frame_key(k[1])))


def stack_names(keys: Sequence[tuple[str, str]], kind: str) -> dict[tuple[str, str], str]:
    what = {"dicom": "phase ", "nifti": "frame "}.get(kind, "")
    several = len({p for p, _ in keys}) > 1
    return {(p, f): f"{p}/{what}{f}" if several else f"{what}{f}" for p, f in keys}


def stack_members(rows: pd.DataFrame, key: tuple[str, str]) -> np.ndarray:
    """Row indices of one stack, apex -> base."""
    members = rows.index[(rows["patient"] == key[0]) & (rows["frame"] == key[1])].to_numpy()
    return members[np.argsort(rows["slice"].to_numpy()[members], kind="stable")]


def split_stacks(rows: pd.DataFrame, kind: str, proba: np.ndarray, monotone: np.ndarray, views: list[np.ndarray],
                 cams: list[np.ndarray]) -> list[StackPrediction]:
    """Every slice's probabilities, labels, view and Grad-CAM gathered per stack; the manifest's labels as the
    reference where it has any."""
    has_labels = "label" in rows and (rows["label"].astype(str) != "").any()
    keys = stack_keys(rows)
    names = stack_names(keys, kind)
    reports = report_names(keys)
    out = []
    for key in keys:
        members = stack_members(rows, key)
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
                    orientation: list[dict[str, Any]] | str) -> dict[str, Any]:
    return {
        "study": str(study),
        "study_kind": kind,
        "model": {"directory": str(trained.directory), "backbone": trained.backbone, "depth": trained.depth,
                  "code_version": trained.meta.get("code_version"), "decoding": trained.decoding.to_dict()},
        "slice_numbering": "0 = most apical slice; first/last are inclusive; null = no IN slice",
        "orientation": orientation,
        "stacks": [{"patient": s.patient, "frame": s.frame, "n_slices": len(s.slices),
                    "monotone": s.in_slices(s.monotone), "argmax": s.in_slices(s.argmax),
                    "every_slice_in": s.every_slice_in,
                    "argmax_is_monotone": s.argmax_is_monotone, "report": s.report} for s in stacks],
    }

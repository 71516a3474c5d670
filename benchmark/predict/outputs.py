"""What predict writes into --out (default: ./<STUDY name>_predictions in the current directory, never beside the
study, which may be read-only shared data), each file atomically (temporary name, then os.replace):
  predictions.csv   one row per slice: patient, frame, slice (0 = apex), n_slices, source, p_<class>...,
                    argmax, monotone (the OAP* IN* OBS* labelling by the decoding model.json records, chosen on
                    the run's validation folds, else the plain monotone decoding: decode.Decoding),
                    label (the manifest's reference label, dataset directories with labels only)
  ranges.json       per stack: first and last IN slice of the monotone labelling and of the argmax (gaps
                    included), n_slices, whether the argmax is already monotone, the report file
  report_<patient>_<frame>.png   per stack (a short hash appended where two stacks' ids make one file name),
                    drawn by draw.py
A directory holding a previous predict output is updated (reports of stacks no longer present are removed); any
other non-empty --out is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Sequence

from data_prep.errors import DataPrepError

PREDICTIONS, RANGES, REPORT_PREFIX = "predictions.csv", "ranges.json", "report_"


def safe_id(text: str) -> str:
    """A patient or frame id as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "x"


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


def stale_reports(out: Path, current: set[str]) -> list[Path]:
    """Reports in out of stacks no longer predicted."""
    return [p for p in out.glob(f"{REPORT_PREFIX}*.png") if p.name not in current]


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

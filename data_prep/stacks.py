"""Labelling of one stack ordered apex -> base, shared by every source that has LV cavity masks or contours."""
from __future__ import annotations

from typing import Sequence

from .errors import DataPrepError


def label_from_cavity(has_cavity: Sequence[bool], where: str = "stack") -> tuple[list[str], list[str]]:
    """OAP / IN / OBS labels for a stack ordered apex (index 0) -> base, from LV-cavity presence per slice.

    IN spans the first to the last slice with LV cavity; slices before it are OAP (beyond the apex), after it
    OBS (beyond the base). A cavity-free slice between IN slices stays IN (the paper's range is contiguous) and
    is reported as a warning. Returns (labels, warnings).
    """
    flags = [bool(x) for x in has_cavity]
    if not any(flags):
        raise DataPrepError(f"{where}: no slice contains LV cavity (label 3); cannot label this stack")
    first = flags.index(True)
    last = len(flags) - 1 - flags[::-1].index(True)
    labels = ["OAP"] * first + ["IN"] * (last - first + 1) + ["OBS"] * (len(flags) - last - 1)
    gaps = [i for i in range(first, last + 1) if not flags[i]]
    warnings = [f"{where}: slices {gaps} have no LV cavity between cavity slices; labelled IN"] if gaps else []
    return labels, warnings

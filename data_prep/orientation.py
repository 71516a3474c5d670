"""Which end of a short-axis stack is the apex, decided from its segmentation masks alone.

Neither ACDC layout records where the apex is, and slice order in the files is whatever the scanner wrote, so
each stack is oriented from anatomy visible in its mask (labels 0 background, 1 RV cavity, 2 LV myocardium,
3 LV cavity). Every cue is a signed score, positive meaning "the apex is at the start of the file order"
(for the trends: area grows with slice index, so the wide base is at the end):

- lv_cavity_trend: the LV cavity narrows towards the apex. Least-squares slope of cavity area against slice
  index over the cavity slices, times the span, over the largest area (about -1 .. 1 whatever the stack size).
  Misleads in infarcted hearts with an apical aneurysm, whose cavity can be widest near the apex at systole.
- myocardium_trend: the myocardial ring is widest at the base and tapers to the apex; same measure over the
  slices holding LV (myocardium or cavity).
- rv_trend: the RV is large at the base and gone before the apex; same measure of RV area over the LV slices.
  Weak in patients with a dilated RV, which can wrap around the apex.
- apical_cap: slices with myocardium but no cavity beyond the cavity slices are the muscular apex; the score is
  (caps before the first cavity slice) - (caps after the last one).

A trend votes when its size is at least WEAK_TREND, the cap when it is non-zero. The apex goes where most votes
point; a tie goes to the sign of the summed trend scores, and no evidence at all keeps the file order. The stack is
ambiguous when votes disagree or fewer than two cues vote.
"""
from __future__ import annotations

from typing import Any

import numpy as np

RV_CAVITY, MYOCARDIUM, LV_CAVITY = 1, 2, 3
WEAK_TREND = 0.2  # a relative change of area under a fifth of the largest area across the span is no evidence
TREND_CUES = ("lv_cavity_trend", "myocardium_trend", "rv_trend")


def relative_trend(areas: np.ndarray) -> float:
    """Fitted change of area from the first to the last element, over the largest area (0 when undefined)."""
    areas = np.asarray(areas, dtype=np.float64)
    if areas.size < 2 or areas.max() <= 0:
        return 0.0
    # centred indices are multiples of 1/2, so integer areas give an exact slope (exactly 0 when flat)
    x = np.arange(areas.size, dtype=np.float64) - (areas.size - 1) / 2
    slope = (x * areas).sum() / (x * x).sum()
    return float(slope * (areas.size - 1) / areas.max())


def _span(mask: np.ndarray) -> tuple[int, int] | None:
    idx = np.flatnonzero(mask)
    return (int(idx[0]), int(idx[-1])) if idx.size else None


def apex_first(labels: np.ndarray) -> tuple[bool, dict[str, Any], bool]:
    """(apex_first, evidence, ambiguous) for a label volume (slice, H, W) in file order.

    apex_first is True when slice 0 of the file is the apical end. evidence holds every cue's score and vote
    (JSON-serialisable) plus the decision.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a label volume (slice, H, W), got shape {labels.shape}")
    lv = (labels == LV_CAVITY).sum(axis=(1, 2))
    myo = (labels == MYOCARDIUM).sum(axis=(1, 2))
    rv = (labels == RV_CAVITY).sum(axis=(1, 2))

    scores: dict[str, float] = {name: 0.0 for name in TREND_CUES}
    cavity = _span(lv > 0)
    if cavity:
        scores["lv_cavity_trend"] = relative_trend(lv[cavity[0]:cavity[1] + 1])
    heart = _span((lv + myo) > 0)
    if heart:
        scores["myocardium_trend"] = relative_trend(myo[heart[0]:heart[1] + 1])
        scores["rv_trend"] = relative_trend(rv[heart[0]:heart[1] + 1])
    caps = (myo > 0) & (lv == 0)
    caps_start = int(caps[:cavity[0]].sum()) if cavity else 0
    caps_end = int(caps[cavity[1] + 1:].sum()) if cavity else 0

    votes = {name: int(np.sign(s)) if abs(s) >= WEAK_TREND else 0 for name, s in scores.items()}
    votes["apical_cap"] = int(np.sign(caps_start - caps_end))
    n_for = sum(v > 0 for v in votes.values())
    n_against = sum(v < 0 for v in votes.values())
    if n_for != n_against:
        first = n_for > n_against
    else:
        first = sum(scores.values()) >= 0  # a sum of exactly 0 (no evidence) keeps the file order
    ambiguous = (n_for > 0 and n_against > 0) or max(n_for, n_against) < 2
    evidence: dict[str, Any] = {
        **{name: round(s, 4) for name, s in scores.items()},
        "apical_caps_start": caps_start,
        "apical_caps_end": caps_end,
        "votes": votes,
        "apex_first": bool(first),
        "ambiguous": bool(ambiguous),
    }
    return bool(first), evidence, bool(ambiguous)

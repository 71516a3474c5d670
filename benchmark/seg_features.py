"""What a segmentation says about a slice, and about its place in the stack: pure numpy, no TensorFlow.

Per slice, from the head's probability map (SEG_CLASSES channels) at the network's input size:
    cavity_mm2, myocardium_mm2   predicted areas (argmax), in mm² where the pixel spacing is known (else native px²)
    cavity_mass_mm2              the summed cavity probability: a small, uncertain apical cavity still counts
    cavity_peak                  the highest cavity probability
    ring                         the share of SECTORS angular sectors around the cavity's centre holding myocardium:
                                 a closed ring below the base, an open one where the outflow tract begins
Across the stack (apex -> base), per slice: the log areas, the cavity area over the stack's largest, that ratio
for the apex-side and base-side neighbours (0 beyond an end), and the slice position (baselines.POSITION_FEATURES).
A small classifier on these (segment.RangeModel) labels each slice OAP / IN / OBS.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from data_prep.manifest import MASK_CODES

from .baselines import POSITION_FEATURES, position_features
from .decode import stack_groups, stack_table
from .preprocess import Preprocessing, input_pixel_area
from .registry import SEG_CLASSES

SECTORS = 16
SLICE_FEATURES = ("cavity_mm2", "myocardium_mm2", "cavity_mass_mm2", "cavity_peak", "ring")
STACK_FEATURES = ("log_cavity", "log_myocardium", "log_cavity_mass", "cavity_peak", "ring", "cavity_share",
                  "apex_side_share", "base_side_share") + tuple(f"position_{p}" for p in POSITION_FEATURES)
CAVITY = SEG_CLASSES.index("lv_cavity")
MYOCARDIUM = SEG_CLASSES.index("lv_myocardium")
# a mask's code -> the head's channel; every structure the head does not segment (the RV) is background
CODE_TO_CHANNEL = np.zeros(256, np.uint8)
for _name, _code in MASK_CODES.items():
    if _name in SEG_CLASSES:
        CODE_TO_CHANNEL[_code] = SEG_CLASSES.index(_name)
POSITION_THIRDS = ("apex", "middle", "base")


def channels_of(mask: np.ndarray) -> np.ndarray:
    """A mask in MASK_CODES -> the head's channel index per pixel."""
    return CODE_TO_CHANNEL[mask]


def ring_completeness(cavity: np.ndarray, myocardium: np.ndarray, sectors: int = SECTORS) -> float:
    """Share of angular sectors around the cavity's centroid with any myocardium pixel; 0 without a cavity."""
    if not cavity.any() or not myocardium.any():
        return 0.0
    cy, cx = np.argwhere(cavity).mean(axis=0)
    yy, xx = np.nonzero(myocardium)
    angle = np.arctan2(yy - cy, xx - cx)
    sector = np.minimum(((angle + np.pi) / (2 * np.pi) * sectors).astype(int), sectors - 1)
    return float(len(np.unique(sector))) / sectors


def slice_features(proba: np.ndarray, pixel_mm2: float) -> np.ndarray:
    """SLICE_FEATURES of one (H, W, len(SEG_CLASSES)) probability map; `pixel_mm2`: the area of one of its pixels."""
    label = proba.argmax(-1)
    cavity, myo = label == CAVITY, label == MYOCARDIUM
    return np.array([cavity.sum() * pixel_mm2, myo.sum() * pixel_mm2, proba[..., CAVITY].sum() * pixel_mm2,
                     proba[..., CAVITY].max(), ring_completeness(cavity, myo)], dtype=np.float64)


def pixel_areas_mm2(ds, rows: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """The area of one network-input pixel of each of `rows` of a Dataset, in mm² (native pixels² where the
    manifest gives no pixel spacing)."""
    spacing = pd.to_numeric(ds.rows["pixel_spacing_mm"].iloc[rows], errors="coerce").fillna(1.0).to_numpy()
    return np.array([input_pixel_area(ds.native(int(r)).shape, prep) for r in rows]) * spacing ** 2


def describe(ds, rows: np.ndarray, maps: np.ndarray, prep: Preprocessing) -> np.ndarray:
    """SLICE_FEATURES of `rows` of a Dataset from their probability maps (the segmenter's output, in rows order)."""
    areas = pixel_areas_mm2(ds, rows, prep)
    return np.stack([slice_features(m, a) for m, a in zip(maps, areas)]).reshape(len(rows), len(SLICE_FEATURES))


def stack_features(per_slice: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
    """STACK_FEATURES for `rows` (a manifest's patient, frame, slice, n_slices), from their SLICE_FEATURES."""
    cav, myo, mass, peak, ring = per_slice.T
    share = np.zeros(len(rows))
    apex_side, base_side = np.zeros(len(rows)), np.zeros(len(rows))
    for g in stack_groups(stack_table(rows, len(rows))):
        largest = cav[g].max()
        share[g] = cav[g] / largest if largest > 0 else 0.0
        apex_side[g[1:]], base_side[g[:-1]] = share[g[:-1]], share[g[1:]]
    return np.column_stack([np.log1p(cav), np.log1p(myo), np.log1p(mass), peak, ring, share, apex_side, base_side,
                            position_features(rows)])


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean maps; NaN where both are empty (no structure to overlap)."""
    total = pred.sum() + truth.sum()
    return float("nan") if total == 0 else 2.0 * float(np.logical_and(pred, truth).sum()) / total


def position_third(rows: pd.DataFrame) -> np.ndarray:
    """apex, middle or base third of each slice's stack: slice s of n lies in third floor(3 s / n) (slice 0 is the
    apex; in integers, so no rounding moves a slice; a single slice is the middle)."""
    s, n = rows["slice"].to_numpy(np.int64), rows["n_slices"].to_numpy(np.int64)
    third = np.where(n > 1, np.minimum(3 * s // np.maximum(n, 1), 2), 1)
    return np.array(POSITION_THIRDS, dtype=object)[third]


def dice_by_position(dices: dict[str, np.ndarray], rows: pd.DataFrame) -> dict[str, dict[str, float | int]]:
    """Mean Dice per structure over the slices whose truth or prediction holds it, per position third and over
    all, with the number of slices each mean is over."""
    thirds = position_third(rows)
    out: dict[str, dict[str, float | int]] = {}
    for name, values in dices.items():
        block: dict[str, float | int] = {}
        for part in ("all",) + POSITION_THIRDS:
            at = np.isfinite(values) & ((thirds == part) if part != "all" else True)
            block[part] = float(values[at].mean()) if at.any() else float("nan")
            block[f"n_{part}"] = int(at.sum())
        out[name] = block
    return out

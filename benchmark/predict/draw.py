"""The PNG report of a stack (also drawn by the viewer): slices apex -> base in a grid; per slice the network's field
of view (the centre crop, windowed), the same with its Grad-CAM, and the class probabilities as bars (OAP #0072B2,
IN #009E73, OBS #D55E00); the tag and border give the monotone label, and the argmax where it differs."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from data_prep import atomic
from data_prep.label import label_colours
from data_prep.manifest import MASK_COLOURS

from ..registry import SEG_CLASSES

from .decide import StackPrediction
from .load import TrainedModel

DISPLAY_PX = 160        # the network's field of view is shown at this size, whatever the input size
MAX_COLS = 8
CAM_CMAP, CAM_ALPHA = "inferno", 0.45  # perceptually uniform, readable without colour vision
TILE_IN = 1.5           # inches per image tile
DPI = 100


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


def slice_tag(stack: StackPrediction, k: int, argmax: np.ndarray, classes: Sequence[str]) -> str:
    """Slice number and decoded label; the argmax where it differs, the reference label where there is one."""
    tag = f"{stack.slices[k]}: {classes[stack.monotone[k]]}"
    if argmax[k] != stack.monotone[k]:
        tag += f" (argmax {classes[argmax[k]]})"
    if stack.reference is not None and stack.reference[k]:
        tag += f"\nref {stack.reference[k]}"
    return tag


def draw_tile(ax, view: np.ndarray, cam: np.ndarray | None, colour: str, contours: bool = False) -> None:
    """A slice's field of view, with its Grad-CAM over it where cam is given (or, with `contours`, cam is a
    segmentation run's label map: its LV cavity and myocardium outlined), framed in its label's colour."""
    ax.imshow(view, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    if cam is not None and contours:
        labels = cv2.resize(cam.astype(np.uint8), (DISPLAY_PX, DISPLAY_PX), interpolation=cv2.INTER_NEAREST)
        for structure in ("lv_myocardium", "lv_cavity"):
            inside = labels == SEG_CLASSES.index(structure)
            if inside.any():
                ax.contour(inside, levels=[0.5], colors=[MASK_COLOURS[structure]], linewidths=0.9)
    elif cam is not None:
        ax.imshow(cam_image(cam, DISPLAY_PX), cmap=CAM_CMAP, alpha=CAM_ALPHA, vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(2.5)


def draw_bars(ax, proba: np.ndarray, classes: Sequence[str], colours: dict[str, str], first_col: bool) -> None:
    ax.bar(range(len(classes)), proba, color=[colours[name] for name in classes], width=0.8)
    ax.set_ylim(0, 1)
    ax.set_xticks(range(len(classes)), classes, fontsize=6)
    ax.set_yticks([0, 0.5, 1] if first_col else [])
    ax.tick_params(axis="both", labelsize=6, length=2, pad=1)


def draw_stack(fig, stack: StackPrediction, classes: Sequence[str], mode: str, title: str,
               contours: bool = False) -> None:
    """Draw one stack on fig: per slice, mode 'both' (image row and Grad-CAM row), 'image' or 'cam', then bars;
    with `contours` the 'cam' row outlines the predicted structures (a segmentation run) instead."""
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
        colour = colours[classes[stack.monotone[k]]]
        for j, panel in enumerate(panels):
            ax = fig.add_subplot(gs[r * per_row + j, c])
            draw_tile(ax, stack.views[k], stack.cams[k] if panel == "cam" else None, colour, contours)
            if c == 0:
                ax.set_ylabel(("contours" if contours else "Grad-CAM") if panel == "cam" else "image", fontsize=7)
            if j == 0:
                ax.set_title(slice_tag(stack, k, argmax, classes), color=colour, fontsize=7, fontweight="bold", pad=2)
        draw_bars(fig.add_subplot(gs[r * per_row + len(panels), c]), stack.proba[k], classes, colours, c == 0)
    fig.suptitle(title, fontsize=9, y=1 - 0.12 / fig.get_figheight(), va="top")


def stack_title(stack: StackPrediction, trained: TrainedModel, extra: str = "") -> str:
    if trained.segments:
        shown = "predicted LV cavity (yellow) and myocardium (purple) outlined"
    else:
        cam = "the per-slice model's argmax class" if trained.stack is not None else "the argmax class"
        shown = f"Grad-CAM of {cam}"
    return (f"{stack.summary()}   [model: {trained.name}]\n"
            f"apex -> base; tag and border: decoded label; bars: class probabilities; {shown}{extra}")


def write_report(path: Path, stack: StackPrediction, trained: TrainedModel) -> Path:
    from matplotlib.figure import Figure
    fig = Figure(figsize=figure_size(len(stack.slices), "both"), dpi=DPI)
    draw_stack(fig, stack, trained.classes, "both", stack_title(stack, trained), trained.segments)
    return atomic.atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=DPI))

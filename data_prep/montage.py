"""Montages of dataset directories: one row per stack, slices apex (left) -> base (right), label on each tile.

The point is to look at the data the way the classifier sees it: every tile is windowed on its own 1st-99th
percentile (as the benchmark's per-image normalisation does), and the label is drawn as a coloured border and tag
in a colour-blind-safe palette (Okabe-Ito), so a mislabelled or misoriented stack stands out at a glance. Where the
dataset has masks (the manifest's mask column), each structure's outline is drawn on its tile in a colour of the same
palette, so a mask that misses the heart or a label that disagrees with its mask shows too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)
import numpy as np  # noqa: E402

from .atomic import atomic_write
from .errors import DataPrepError  # noqa: E402
from .manifest import MASK_CODES, MASK_COLOURS, MASK_COLUMN, load_image, load_mask, read_manifest  # noqa: E402

LABEL_COLOURS = {"OAP": "#0072B2", "IN": "#009E73", "OBS": "#D55E00"}
UNLABELLED_COLOUR = "#999999"
TILE_PX = 96      # every slice is letterboxed into a square tile of this size
BORDER_PX = 4     # the label colour around the tile
GAP_PX = 2        # dark space between tiles
TITLE_PX = 150    # the row-title column left of each panel
HEADER_PX = 28    # the panel title above the rows
PANEL_GAP_PX = 24
BACKGROUND = (0.08, 0.08, 0.08)
DPI = 100


@dataclass
class _Panel:
    title: str
    canvas: np.ndarray                       # H x W x 3 float in [0, 1]
    row_titles: list[tuple[float, str]]      # (y centre, text)
    tags: list[tuple[float, float, str, str]]  # (x, y, text, colour) at a tile's top-left corner
    outlined: set[str]                       # the mask structures drawn


def window(img: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0) -> np.ndarray:
    """Scale to [0, 1] between the image's lo and hi percentiles (clipped); a flat image maps to 0."""
    img = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(img, [lo_pct, hi_pct])
    if hi <= lo:
        return np.zeros_like(img)
    return np.clip((img - lo) / (hi - lo), 0.0, 1.0)


def _letterbox(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = small
    return out


def _outline(mask: np.ndarray, size: int) -> np.ndarray:
    """The one-pixel inner boundary of a binary mask letterboxed like its image into a tile of this size."""
    inside = (_letterbox(mask.astype(np.float32), size) >= 0.5).astype(np.uint8)
    return inside.astype(bool) & ~cv2.erode(inside, np.ones((3, 3), np.uint8)).astype(bool)


def _draw_outlines(tile: np.ndarray, mask: np.ndarray) -> set[str]:
    """Paint each structure's outline on an RGB tile in place; returns the structures found in the mask."""
    found = set()
    for structure, code in MASK_CODES.items():
        if (mask == code).any():
            tile[_outline(mask == code, tile.shape[0])] = _rgb(MASK_COLOURS[structure])
            found.add(structure)
    return found


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array(matplotlib.colors.to_rgb(hex_colour), dtype=np.float32)


def _spread(n: int, k: int) -> list[int]:
    """k indices of range(n) evenly spread and always keeping both ends (where OAP and OBS live)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def _choose_stacks(df, stacks: Sequence[tuple[str, str]] | None, max_stacks: int, where: str
                   ) -> list[tuple[str, str]]:
    present = list(dict.fromkeys(zip(df["patient"].astype(str), df["frame"].astype(str))))
    if stacks is None:
        return present[:max_stacks]
    wanted = [(str(p), str(f)) for p, f in stacks]
    missing = [f"{p}/{f}" for p, f in wanted if (p, f) not in set(present)]
    if missing:
        raise DataPrepError(f"{where}: no stack {', '.join(missing)} in the manifest")
    return wanted


def _panel(title: str, dataset_dir: str | os.PathLike, stacks: Sequence[tuple[str, str]] | None,
           max_stacks: int, max_slices: int, masks: bool) -> _Panel:
    dataset_dir = Path(dataset_dir)
    df = read_manifest(dataset_dir)
    chosen = _choose_stacks(df, stacks, max_stacks, str(dataset_dir))
    if not chosen:
        raise DataPrepError(f"{dataset_dir}: no stacks to show")
    cell = TILE_PX + 2 * BORDER_PX + GAP_PX
    rows = []
    for patient, frame in chosen:
        sub = df[(df["patient"].astype(str) == patient) & (df["frame"].astype(str) == frame)].sort_values("slice")
        rows.append(sub.iloc[_spread(len(sub), max_slices)])
    ncols = max(len(r) for r in rows)
    canvas = np.empty((HEADER_PX + len(rows) * cell, TITLE_PX + ncols * cell, 3), dtype=np.float32)
    canvas[:] = BACKGROUND
    row_titles, tags = [], []
    outlined: set[str] = set()
    masks = masks and MASK_COLUMN in df
    for r, sub in enumerate(rows):
        y0 = HEADER_PX + r * cell
        n_all = int(sub["n_slices"].iloc[0])
        row_titles.append((y0 + cell / 2, f"{sub['patient'].iloc[0]}/{sub['frame'].iloc[0]}\n{n_all} slices"))
        for c, rec in enumerate(sub.itertuples(index=False)):
            x0 = TITLE_PX + c * cell
            label = str(rec.label)
            colour = LABEL_COLOURS.get(label, UNLABELLED_COLOUR)
            canvas[y0:y0 + TILE_PX + 2 * BORDER_PX, x0:x0 + TILE_PX + 2 * BORDER_PX] = _rgb(colour)
            image = load_image(dataset_dir / rec.image)
            tile = np.repeat(_letterbox(window(image), TILE_PX)[..., None], 3, axis=2)
            mask_name = getattr(rec, MASK_COLUMN) if masks else ""
            if mask_name:
                outlined |= _draw_outlines(tile, load_mask(dataset_dir / mask_name, image.shape))
            canvas[y0 + BORDER_PX:y0 + BORDER_PX + TILE_PX, x0 + BORDER_PX:x0 + BORDER_PX + TILE_PX] = tile
            tags.append((x0 + BORDER_PX + 1, y0 + BORDER_PX + 1, f"{rec.slice} {label or '?'}", colour))
    return _Panel(title, canvas, row_titles, tags, outlined)


def _save_atomically(fig, out_png: Path) -> Path:
    try:
        return atomic_write(out_png, lambda p: fig.savefig(p, dpi=DPI, format="png", facecolor=BACKGROUND))
    finally:
        plt.close(fig)


def _draw(panels: list[_Panel], out_png: str | os.PathLike) -> Path:
    # One pixel of canvas per figure pixel keeps the tiles sharp and the text a fixed size.
    height = max(p.canvas.shape[0] for p in panels)
    width = sum(p.canvas.shape[1] for p in panels) + PANEL_GAP_PX * (len(panels) - 1)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    x = 0
    for p in panels:
        h, w = p.canvas.shape[:2]
        ax = fig.add_axes((x / width, 1 - h / height, w / width, h / height))
        ax.imshow(np.clip(p.canvas, 0.0, 1.0), interpolation="nearest", aspect="equal")
        ax.set_axis_off()
        ax.text(8, HEADER_PX / 2, p.title, color="white", fontsize=11, weight="bold", va="center", ha="left")
        for yc, text in p.row_titles:
            ax.text(TITLE_PX - 8, yc, text, color="white", fontsize=8, va="center", ha="right")
        for tx, ty, text, colour in p.tags:
            ax.text(tx, ty, text, color="white", fontsize=6, va="top", ha="left",
                    bbox=dict(facecolor=colour, edgecolor="none", pad=1.0, alpha=0.85))
        x += w + PANEL_GAP_PX
    for i, (name, colour) in enumerate(reversed(list(LABEL_COLOURS.items()))):
        fig.text(1 - (14 + i * 52) / width, 1 - (HEADER_PX / 2) / height, name, color="white", fontsize=9,
                 va="center", ha="right", bbox=dict(facecolor=colour, edgecolor="none", pad=2.0))
    outlined = [s for s in MASK_COLOURS if any(s in p.outlined for p in panels)]
    for i, structure in enumerate(reversed(outlined)):
        fig.text(1 - (14 + 3 * 52 + 12 + i * 100) / width, 1 - (HEADER_PX / 2) / height,
                 structure.replace("_", " "), color=MASK_COLOURS[structure], fontsize=9, va="center", ha="right")
    return _save_atomically(fig, Path(out_png))


def render_montage(dataset_dir: str | os.PathLike, out_png: str | os.PathLike,
                   stacks: Sequence[tuple[str, str]] | None = None, max_stacks: int = 12,
                   max_slices: int = 16, title: str | None = None, masks: bool = True) -> Path:
    """Draw stacks of one dataset directory to out_png (the first max_stacks stacks when stacks is None).

    Stacks longer than max_slices show an even spread of slices that always keeps the first and last. masks:
    outline each slice's mask structures on its tile where the dataset has masks. Returns the path written.
    """
    if max_stacks < 1 or max_slices < 1:
        raise DataPrepError("render_montage: max_stacks and max_slices must be at least 1")
    title = title if title is not None else Path(dataset_dir).name
    return _draw([_panel(title, dataset_dir, stacks, max_stacks, max_slices, masks)], out_png)


def render_montages(panels: Sequence[tuple[str, str | os.PathLike, Sequence[tuple[str, str]] | None]],
                    out_png: str | os.PathLike, max_stacks: int = 12, max_slices: int = 16,
                    masks: bool = True) -> Path:
    """Several datasets side by side, each panel given as (title, dataset_dir, stacks or None); masks as in
    render_montage."""
    if not panels:
        raise DataPrepError("render_montages: no panels given")
    return _draw([_panel(t, d, s, max_stacks, max_slices, masks) for t, d, s in panels], out_png)

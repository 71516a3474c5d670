"""Label slices by hand: `python -m data_prep.label DIR [--start PATIENT/FRAME]`.

Shows one (patient, frame) stack at a time, slices apex (0) -> base as a grid of tiles, each windowed on its own
1st-99th percentile and outlined in its label's colour (Okabe-Ito, colour-blind safe). Keys 1..k set the slice
under the pointer (or the last one clicked) to class k, 0/u clear it, left/right or n/p change stack, s saves,
q saves and closes; a left click cycles a slice to the next class, a right click to the previous one.

Saving rewrites only the label column of manifest.csv, atomically, after keeping the previous manifest as
manifest.csv.bak; changes are also saved on changing stack and on closing the window. The current stack is kept
in .label_state.json so the next session opens where this one stopped.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.backend_bases import KeyEvent, MouseEvent
from matplotlib.figure import Figure

from .atomic import atomic_write
from .errors import DataPrepError
from .manifest import (DATASET_JSON, MANIFEST, counts, dataset_classes, file_sha256, load_image,
                       read_dataset_json, read_manifest)

STATE_FILE = ".label_state.json"
BACKUP = MANIFEST + ".bak"
# Okabe-Ito: the slice classes keep fixed colours; any other class list takes the remaining ones in order.
CLASS_COLOURS = {"OAP": "#0072B2", "IN": "#009E73", "OBS": "#D55E00"}
SPARE_COLOURS = ("#E69F00", "#56B4E9", "#CC79A7", "#F0E442", "#000000")
UNLABELLED_COLOUR = "#999999"
UNLABELLED_TEXT = "unlabelled"


def label_colours(classes: Sequence[str]) -> dict[str, str]:
    """Colour per class name, plus "" (unlabelled) in grey."""
    spare = iter(c for c in SPARE_COLOURS if c not in {CLASS_COLOURS.get(k) for k in classes})
    colours = {}
    for name in classes:
        colours[name] = CLASS_COLOURS.get(name) or next(spare, UNLABELLED_COLOUR)
    colours[""] = UNLABELLED_COLOUR
    return colours


def cycle_label(current: str, classes: Sequence[str], step: int) -> str:
    """The label `step` places after `current` in the ring unlabelled -> classes[0] -> ... -> classes[-1]."""
    ring = ["", *classes]
    return ring[(ring.index(current) + step) % len(ring)]


def grid_shape(n: int, aspect: float = 1.5) -> tuple[int, int]:
    """(rows, cols) for n square tiles in a figure `aspect` times wider than tall."""
    cols = min(n, math.ceil(math.sqrt(n * aspect)))
    return math.ceil(n / cols), cols


def window_limits(img: np.ndarray) -> tuple[float, float]:
    """Display range: the image's 1st and 99th percentiles, widened to one unit when they coincide."""
    lo, hi = (float(v) for v in np.percentile(img, [1, 99]))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def parse_start(text: str) -> tuple[str, str]:
    patient, sep, frame = text.rpartition("/")
    if not sep or not patient or not frame:
        raise DataPrepError(f"--start {text!r}: expected PATIENT/FRAME, e.g. patient001/ED")
    return patient, frame


def _atomic_write(path: Path, data: bytes) -> None:
    """Replace the file whole, keeping its permissions: a crash leaves the old file or the new one."""
    mode = path.stat().st_mode & 0o7777 if path.exists() else None

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
    atomic_write(path, write)


class LabelTool:
    """The labelling window for one dataset directory; `fig` defaults to a new pyplot figure."""

    def __init__(self, dataset_dir: str | os.PathLike, fig: Figure | None = None,
                 start: tuple[str, str] | None = None) -> None:
        self.dir = Path(dataset_dir)
        self.df = read_manifest(self.dir)
        if not os.access(self.dir, os.W_OK):
            raise DataPrepError(f"{self.dir} is not writable, so labels could not be saved; "
                                f"copy the dataset directory somewhere writable first")
        self.classes = dataset_classes(self.dir)
        self.colours = label_colours(self.classes)
        self.key_classes = {str(k): name for k, name in enumerate(self.classes[:9], start=1)}
        self.labels = self.df["label"].to_numpy(dtype=object).copy()
        self.saved = self.labels.copy()
        self._manifest_sha = file_sha256(self.dir / MANIFEST)
        # stacks in manifest order, each as row positions sorted apex -> base
        order = self.df.reset_index(drop=True).sort_values("slice", kind="stable")
        groups = order.groupby(["patient", "frame"], sort=False).indices
        first_row = {key: order.index[rows].min() for key, rows in groups.items()}
        self.stacks = sorted(groups, key=first_row.__getitem__)
        self._rows = {key: order.index[rows].to_numpy() for key, rows in groups.items()}
        self.index = self._initial_index(start)
        self.selected: int | None = None   # position within the current stack
        self.message = ""
        self.tiles: dict[object, int] = {}  # Axes -> position within the stack

        self.fig = fig if fig is not None else plt.figure(figsize=(13, 8.5))
        manager = self.fig.canvas.manager
        if manager is not None and getattr(manager, "key_press_handler_id", None) is not None:
            # matplotlib's default keys (s = save figure, q = close, l = log scale, ...) clash with ours
            self.fig.canvas.mpl_disconnect(manager.key_press_handler_id)
            manager.key_press_handler_id = None
        canvas = self.fig.canvas
        canvas.mpl_connect("key_press_event", self._on_key)
        canvas.mpl_connect("button_press_event", self._on_click)
        canvas.mpl_connect("motion_notify_event", self._on_move)
        canvas.mpl_connect("close_event", self._on_close)
        self._write_state()
        self._draw_stack()

    # ---- state -------------------------------------------------------------------------------------------
    def _initial_index(self, start: tuple[str, str] | None) -> int:
        if start is not None:
            if start not in self._rows:
                raise DataPrepError(f"--start {start[0]}/{start[1]}: no such patient/frame in {self.dir / MANIFEST}")
            return self.stacks.index(start)
        path = self.dir / STATE_FILE
        if not path.is_file():
            return 0
        try:
            state = json.loads(path.read_text())
            return self.stacks.index((str(state["patient"]), str(state["frame"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            print(f"data_prep.label: ignoring {path} (unreadable or names a stack that is gone); "
                  f"starting at the first stack", file=sys.stderr)
            return 0

    def _write_state(self) -> None:
        patient, frame = self.current
        _atomic_write(self.dir / STATE_FILE,
                      (json.dumps({"patient": patient, "frame": frame}, indent=2) + "\n").encode())

    @property
    def current(self) -> tuple[str, str]:
        return self.stacks[self.index]

    def stack_labels(self) -> list[str]:
        """Labels of the current stack, apex -> base."""
        return [str(v) for v in self.labels[self._rows[self.current]]]

    @property
    def unsaved(self) -> int:
        return int((self.labels != self.saved).sum())

    def set_label(self, position: int, label: str) -> None:
        if label not in self.classes and label != "":
            raise DataPrepError(f"unknown class {label!r}; this dataset's classes are {list(self.classes)}")
        self.labels[self._rows[self.current][position]] = label
        self.selected = position
        self._restyle()

    def save(self) -> bool:
        """Write the labels into manifest.csv (previous one kept as .bak); False when nothing changed."""
        if not self.unsaved:
            return False
        path = self.dir / MANIFEST
        if file_sha256(path) != self._manifest_sha:
            raise DataPrepError(f"{path} changed on disk since this tool opened it; not overwriting it "
                                f"(close the tool and open it again)")
        before = path.read_bytes()
        # every cell as the text it was, so the other columns come back byte for byte
        raw = pd.read_csv(io.BytesIO(before), dtype=str, keep_default_na=False)
        raw["label"] = self.labels
        _atomic_write(self.dir / BACKUP, before)
        _atomic_write(path, raw.to_csv(index=False, lineterminator="\n").encode())
        self._manifest_sha = file_sha256(path)
        self.saved = self.labels.copy()
        meta = read_dataset_json(self.dir)
        if meta:
            # dataset.json describes this manifest: keep its checksum and label counts true
            meta["manifest_sha256"] = self._manifest_sha
            meta["counts"] = counts(read_manifest(self.dir))
            _atomic_write(self.dir / DATASET_JSON,
                          (json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n").encode())
        return True

    def go(self, step: int) -> None:
        """Move `step` stacks on (clamped to the ends), saving first."""
        target = min(max(self.index + step, 0), len(self.stacks) - 1)
        if target == self.index:
            self.message = "first stack" if step < 0 else "last stack"
            self._update_status()
            return
        self.message = "saved" if self.save() else ""
        previous, self.index, self.selected = self.index, target, None
        try:
            self._draw_stack()
        except DataPrepError:
            self.index = previous  # the old stack is still on screen: the images are read before clearing
            raise
        self._write_state()

    # ---- drawing -----------------------------------------------------------------------------------------
    def _draw_stack(self) -> None:
        fig = self.fig
        rows = self._rows[self.current]
        images = [load_image(self.dir / self.df.at[row, "image"]) for row in rows]
        fig.clf()
        n = len(rows)
        nr, nc = grid_shape(n)
        fig.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.10, wspace=0.05, hspace=0.22)
        axes = fig.subplots(nr, nc, squeeze=False).ravel()
        self.tiles = {}
        for pos, ax in enumerate(axes):
            if pos >= n:
                ax.remove()
                continue
            vmin, vmax = window_limits(images[pos])
            ax.imshow(images[pos], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            self.tiles[ax] = pos
        patient, frame = self.current
        fig.suptitle(f"patient {patient}   frame {frame}   (apex \u2192 base)", fontsize=13)
        self._status = fig.text(0.01, 0.01, "", fontsize=9, family="monospace", va="bottom")
        self._restyle()

    def _restyle(self) -> None:
        labels = self.stack_labels()
        for ax, pos in self.tiles.items():
            lab = labels[pos]
            colour = self.colours[lab]
            chosen = pos == self.selected
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(7 if chosen else 3.5)
            mark = "\u25b6 " if chosen else ""
            ax.set_title(f"{mark}{pos}: {lab or UNLABELLED_TEXT}", color=colour, fontsize=11,
                         fontweight="bold" if chosen else "normal", pad=7)
        self._update_status()

    def status_text(self) -> str:
        patient, frame = self.current
        keys = "  ".join(f"{k}={c}" for k, c in self.key_classes.items())
        line1 = (f"stack {self.index + 1}/{len(self.stacks)}   patient {patient}   frame {frame}   "
                 f"unsaved changes: {self.unsaved}" + (f"   [{self.message}]" if self.message else ""))
        line2 = (f"keys: {keys}  0/u=clear  \u2190/\u2192 or p/n=stack  s=save  q=save+quit   "
                 f"click: left=next class, right=previous")
        return f"{line1}\n{line2}"

    def _update_status(self) -> None:
        self._status.set_text(self.status_text())
        self._status.set_color("#B00000" if self.message.startswith("error") else "black")
        self.fig.canvas.draw_idle()

    # ---- events ------------------------------------------------------------------------------------------
    def _tile_at(self, event) -> int | None:
        return self.tiles.get(event.inaxes)

    def _on_move(self, event: MouseEvent) -> None:
        pos = self._tile_at(event)
        if pos is not None and pos != self.selected:
            self.selected = pos
            self._restyle()

    def _on_click(self, event: MouseEvent) -> None:
        toolbar = self.fig.canvas.toolbar
        if getattr(toolbar, "mode", "") or event.button not in (1, 3):
            return  # zooming or panning, or a button that does not label
        pos = self._tile_at(event)
        if pos is None:
            return
        self.message = ""
        self.set_label(pos, cycle_label(self.stack_labels()[pos], self.classes, 1 if event.button == 1 else -1))

    def _on_key(self, event: KeyEvent) -> None:
        key = event.key
        under = self._tile_at(event)
        if under is not None:
            self.selected = under
        self.message = ""
        try:
            if key in ("right", "n"):
                self.go(+1)
            elif key in ("left", "p"):
                self.go(-1)
            elif key == "s":
                self.message = "saved" if self.save() else "nothing to save"
                self._update_status()
            elif key == "q":
                self.save()
                plt.close(self.fig)
            elif key in ("0", "u") or key in self.key_classes:
                if self.selected is None:
                    self.message = "point at or click a slice first"
                    self._update_status()
                else:
                    self.set_label(self.selected, self.key_classes.get(key, ""))
        except DataPrepError as exc:
            # an exception inside a GUI callback would only reach the terminal; show it where the user looks
            self.message = f"error: {exc}"
            print(f"data_prep.label: error: {exc}", file=sys.stderr)
            self._update_status()

    def _on_close(self, event) -> None:
        try:
            self.save()
        except DataPrepError as exc:
            print(f"data_prep.label: error: {exc}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep.label",
        description="Label the slices of a dataset directory by hand, one stack at a time (apex -> base). "
                    "Keys: 1..k set the slice under the pointer to class k, 0/u clear, left/right or p/n change "
                    "stack, s save, q save and quit; left/right click cycles a slice's class. Saves rewrite only "
                    "the label column of manifest.csv (old one kept as manifest.csv.bak); the next session "
                    "resumes at the stack where this one stopped.")
    parser.add_argument("dir", metavar="DIR", help="dataset directory (holding manifest.csv)")
    parser.add_argument("--start", metavar="PATIENT/FRAME",
                        help="open at this stack instead of where the last session stopped")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        start = parse_start(args.start) if args.start else None
        tool = LabelTool(args.dir, start=start)
        if type(tool.fig.canvas).required_interactive_framework is None:
            plt.close(tool.fig)
            raise DataPrepError(f"matplotlib backend {plt.get_backend()!r} cannot open a window (no display?); "
                                f"set MPLBACKEND to an interactive one, e.g. MPLBACKEND=TkAgg")
    except DataPrepError as exc:
        print(f"data_prep.label: error: {exc}", file=sys.stderr)
        return 2
    plt.show()
    return 0


if __name__ == "__main__":
    sys.exit(main())

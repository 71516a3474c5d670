"""data_prep.montage: the figure is a valid PNG whose shape follows the grid of stacks and slices."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from data_prep.errors import DataPrepError
from data_prep.manifest import Stack, write_dataset
from data_prep.montage import (BORDER_PX, GAP_PX, HEADER_PX, PANEL_GAP_PX, TILE_PX, TITLE_PX, _spread,
                               render_montage, render_montages, window)

CELL = TILE_PX + 2 * BORDER_PX + GAP_PX


def _dataset(path, n_stacks=3, n_slices=5, shape=(40, 30)):
    rng = np.random.default_rng(0)
    stacks = []
    for k in range(n_stacks):
        labels = ["OAP"] + ["IN"] * (n_slices - 2) + ["OBS"]
        images = [rng.integers(0, 2000, size=shape, dtype=np.uint16) for _ in range(n_slices)]
        stacks.append(Stack(f"p{k}", "ED", images, labels, [f"s{i}" for i in range(n_slices)]))
    return write_dataset(path, "tiny", stacks, source="test")


def test_window_maps_percentiles_to_unit_range():
    img = np.arange(101, dtype=np.float32)  # percentiles 1 and 99 are 1 and 99
    out = window(img)
    assert out[1] == 0 and out[99] == 1
    assert out[50] == pytest.approx(49 / 98)
    assert out.min() == 0 and out.max() == 1
    assert not window(np.full((4, 4), 7.0)).any()


def test_spread_keeps_both_ends():
    assert _spread(5, 16) == [0, 1, 2, 3, 4]
    assert _spread(20, 4) == [0, 6, 13, 19]


def test_render_montage_writes_png_of_grid_size(tmp_path):
    ds = _dataset(tmp_path / "ds", n_stacks=3, n_slices=5)
    out = render_montage(ds, tmp_path / "figs" / "m.png")
    img = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 3
    assert img.shape[:2] == (HEADER_PX + 3 * CELL, TITLE_PX + 5 * CELL)
    assert not list((tmp_path / "figs").glob(".*"))  # no temporary file left behind


def test_render_montage_limits_stacks_and_slices(tmp_path):
    ds = _dataset(tmp_path / "ds", n_stacks=4, n_slices=9)
    img = cv2.imread(str(render_montage(ds, tmp_path / "m.png", max_stacks=2, max_slices=4)))
    assert img.shape[:2] == (HEADER_PX + 2 * CELL, TITLE_PX + 4 * CELL)
    img = cv2.imread(str(render_montage(ds, tmp_path / "m.png", stacks=[("p3", "ED")])))
    assert img.shape[:2] == (HEADER_PX + CELL, TITLE_PX + 9 * CELL)


def test_render_montages_side_by_side(tmp_path):
    a = _dataset(tmp_path / "a", n_stacks=2, n_slices=4)
    b = _dataset(tmp_path / "b", n_stacks=3, n_slices=6, shape=(64, 64))
    out = render_montages([("A", a, None), ("B", b, [("p0", "ED"), ("p2", "ED")])], tmp_path / "ab.png")
    img = cv2.imread(str(out))
    width = (TITLE_PX + 4 * CELL) + PANEL_GAP_PX + (TITLE_PX + 6 * CELL)
    assert img.shape[:2] == (HEADER_PX + 2 * CELL, width)


def test_unknown_stack_is_named(tmp_path):
    ds = _dataset(tmp_path / "ds", n_stacks=1)
    with pytest.raises(DataPrepError, match="p9/ES"):
        render_montage(ds, tmp_path / "m.png", stacks=[("p9", "ES")])

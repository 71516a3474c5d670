"""data_prep.montage: the figure is a valid PNG whose shape follows the grid of stacks and slices, with mask outlines
where the dataset has masks."""
from __future__ import annotations

import cv2
import matplotlib.colors
import numpy as np
import pytest

from data_prep.errors import DataPrepError
from data_prep.manifest import MASK_CODES, Stack, write_dataset
from data_prep.montage import (BORDER_PX, GAP_PX, HEADER_PX, MASK_COLOURS, PANEL_GAP_PX, TILE_PX, TITLE_PX, _spread,
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


def _masked_dataset(path, with_masks=True):
    """One stack of three 40x40 slices; the middle one has an LV cavity square inside a myocardial ring."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 2000, size=(40, 40), dtype=np.uint16) for _ in range(3)]
    mask = np.zeros((40, 40), np.uint8)
    mask[6:34, 6:34] = MASK_CODES["lv_myocardium"]
    mask[12:28, 12:28] = MASK_CODES["lv_cavity"]
    masks = [None, mask, np.zeros((40, 40), np.uint8)] if with_masks else None
    stack = Stack("p0", "ED", images, ["OAP", "IN", "OBS"], ["a", "b", "c"], masks=masks)
    return write_dataset(path, "masked", [stack], source="test",
                         mask_structures=["lv_myocardium", "lv_cavity"] if with_masks else ())


def _tiles_in_colour(png, hex_colour, n_tiles=3):
    """Per tile (inside its label border), how many pixels have this colour."""
    img = cv2.imread(str(png))[..., ::-1].astype(int)
    rgb = np.round(np.array(matplotlib.colors.to_rgb(hex_colour)) * 255).astype(int)
    hits = (np.abs(img - rgb) <= 2).all(axis=2)
    y0 = HEADER_PX + BORDER_PX
    return [int(hits[y0:y0 + TILE_PX, TITLE_PX + c * CELL + BORDER_PX:][:, :TILE_PX].sum()) for c in range(n_tiles)]


def test_mask_outlines_are_drawn_where_a_mask_is(tmp_path):
    ds = _masked_dataset(tmp_path / "ds")
    drawn = render_montage(ds, tmp_path / "m.png")
    cavity, myo = MASK_COLOURS["lv_cavity"], MASK_COLOURS["lv_myocardium"]
    # one-pixel outlines of squares of these sides in mask pixels, upscaled 96/40, on the middle tile only: the
    # cavity's edge, and the myocardial ring's outer and inner edges
    for colour, sides in ((cavity, 16), (myo, 28 + 16)):
        counts = _tiles_in_colour(drawn, colour)
        assert counts[0] == counts[2] == 0
        assert 0.8 * 4 * sides * TILE_PX / 40 < counts[1] < 1.2 * 4 * sides * TILE_PX / 40, counts
    assert _tiles_in_colour(render_montage(ds, tmp_path / "off.png", masks=False), cavity) == [0, 0, 0]
    plain = _masked_dataset(tmp_path / "plain", with_masks=False)
    assert _tiles_in_colour(render_montage(plain, tmp_path / "p.png"), cavity) == [0, 0, 0]

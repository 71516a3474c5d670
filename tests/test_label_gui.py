"""The hand-labelling GUI (data_prep.label), driven headless with synthetic matplotlib events."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backend_bases import CloseEvent, KeyEvent, MouseEvent  # noqa: E402

from data_prep.errors import DataPrepError  # noqa: E402
from data_prep.label import (BACKUP, STATE_FILE, LabelTool, cycle_label, grid_shape, label_colours,  # noqa: E402
                             main, parse_start, window_limits)
from data_prep.manifest import (MANIFEST, Stack, file_sha256, read_dataset_json, read_manifest,  # noqa: E402
                               write_dataset)

REPO = Path(__file__).resolve().parents[1]
STACKS = [("P01", "ED"), ("P01", "ES"), ("P02", "ED"), ("P02", "ES")]
FIRST_LABELS = ["OAP", "IN", "IN", "", "OBS"]


def make_dataset(out: Path, classes=("OAP", "IN", "OBS"), labels=FIRST_LABELS) -> Path:
    rng = np.random.default_rng(0)
    stacks = []
    for patient, frame in STACKS:
        stacks.append(Stack(
            patient=patient, frame=frame,
            images=[rng.integers(0, 4000, (24, 20), dtype=np.uint16) for _ in range(5)],
            labels=list(labels) if (patient, frame) == STACKS[0] else [""] * 5,
            # a comma and a float that pandas would reformat: both must survive a save unchanged
            sources=[f"{patient}_{frame}.dcm, image {i}" for i in range(5)],
            pixel_spacing_mm=1.40625,
            extra={"lv_cavity_px": [0, 12.5, 30, 7, 0]},
        ))
    return write_dataset(out, "toy", stacks, source="test", classes=classes)


@pytest.fixture
def ds(tmp_path):
    return make_dataset(tmp_path / "ds")


@pytest.fixture
def fig():
    f = plt.figure(figsize=(13, 8.5), dpi=40)  # the real window size, fewer pixels
    yield f
    plt.close("all")


def centre(tool: LabelTool, pos: int) -> tuple[float, float]:
    ax = next(a for a, p in tool.tiles.items() if p == pos)
    bb = ax.bbox
    return (bb.x0 + bb.x1) / 2, (bb.y0 + bb.y1) / 2


def key(tool: LabelTool, k: str, pos: int | None = None) -> None:
    x, y = centre(tool, pos) if pos is not None else (1, 1)  # (1, 1): the figure corner, over no tile
    tool.fig.canvas.callbacks.process("key_press_event", KeyEvent("key_press_event", tool.fig.canvas, k, x, y))


def click(tool: LabelTool, pos: int, button: int = 1) -> None:
    x, y = centre(tool, pos)
    tool.fig.canvas.callbacks.process(
        "button_press_event", MouseEvent("button_press_event", tool.fig.canvas, x, y, button=button))


def hover(tool: LabelTool, pos: int) -> None:
    x, y = centre(tool, pos)
    tool.fig.canvas.callbacks.process(
        "motion_notify_event", MouseEvent("motion_notify_event", tool.fig.canvas, x, y))


# ---- pure helpers ------------------------------------------------------------------------------------------

def test_cycle_label_runs_through_unlabelled_and_the_classes():
    classes = ("OAP", "IN", "OBS")
    assert cycle_label("", classes, 1) == "OAP"
    assert cycle_label("OAP", classes, 1) == "IN"
    assert cycle_label("OBS", classes, 1) == ""
    assert cycle_label("", classes, -1) == "OBS"
    assert cycle_label("IN", classes, -1) == "OAP"


def test_grid_shape():
    assert grid_shape(1) == (1, 1)
    assert grid_shape(5) == (2, 3)     # ceil(sqrt(7.5)) = 3 columns
    assert grid_shape(12) == (3, 5)    # ceil(sqrt(18)) = 5 columns
    assert grid_shape(20) == (4, 6)    # ceil(sqrt(30)) = 6 columns


def test_window_limits_are_the_1st_and_99th_percentiles():
    assert window_limits(np.arange(101).reshape(1, 101)) == (1.0, 99.0)
    assert window_limits(np.full((3, 3), 7, np.uint16)) == (7.0, 8.0)


def test_label_colours_are_okabe_ito_and_grey():
    assert label_colours(("OAP", "IN", "OBS")) == {
        "OAP": "#0072B2", "IN": "#009E73", "OBS": "#D55E00", "": "#999999"}
    assert label_colours(("normal", "abnormal")) == {"normal": "#E69F00", "abnormal": "#56B4E9", "": "#999999"}


def test_parse_start():
    assert parse_start("patient001/ED") == ("patient001", "ED")
    for bad in ("patient001", "/ED", "patient001/"):
        with pytest.raises(DataPrepError, match="PATIENT/FRAME"):
            parse_start(bad)


# ---- the window ----------------------------------------------------------------------------------------------

def test_opens_first_stack_apex_to_base_with_labels_and_colours(ds, fig):
    tool = LabelTool(ds, fig=fig)
    assert tool.current == ("P01", "ED")
    assert len(tool.tiles) == 5
    by_pos = {p: ax for ax, p in tool.tiles.items()}
    assert [by_pos[p].get_title() for p in range(5)] == ["0: OAP", "1: IN", "2: IN", "3: unlabelled", "4: OBS"]
    assert matplotlib.colors.to_hex(by_pos[0].spines["top"].get_edgecolor()) == "#0072b2"
    assert matplotlib.colors.to_hex(by_pos[3].spines["left"].get_edgecolor()) == "#999999"
    # slice 0 holds the manifest's slice-0 image
    first = read_manifest(ds).query("patient == 'P01' and frame == 'ED' and slice == 0").image.item()
    assert first.endswith("P01_ED_s00.png")
    status = tool.status_text()
    assert "stack 1/4" in status and "patient P01" in status and "frame ED" in status
    assert "unsaved changes: 0" in status and "1=OAP  2=IN  3=OBS" in status


def test_keys_set_and_clear_the_slice_under_the_pointer(ds, fig):
    tool = LabelTool(ds, fig=fig)
    key(tool, "3", pos=3)
    assert tool.stack_labels()[3] == "OBS"
    key(tool, "1", pos=4)
    assert tool.stack_labels() == ["OAP", "IN", "IN", "OBS", "OAP"]
    key(tool, "u", pos=0)
    key(tool, "0", pos=1)
    assert tool.stack_labels() == ["", "", "IN", "OBS", "OAP"]
    assert tool.unsaved == 4 and "unsaved changes: 4" in tool.status_text()
    key(tool, "7", pos=2)  # no 7th class: ignored
    assert tool.stack_labels()[2] == "IN"


def test_hover_selects_then_key_away_from_tiles_labels_it(ds, fig):
    tool = LabelTool(ds, fig=fig)
    key(tool, "2")  # nothing selected yet
    assert "point at or click a slice first" in tool.status_text()
    hover(tool, 3)
    assert tool.selected == 3
    key(tool, "2")
    assert tool.stack_labels()[3] == "IN"


def test_clicks_cycle_the_label(ds, fig):
    tool = LabelTool(ds, fig=fig)
    click(tool, 3)              # unlabelled -> OAP
    click(tool, 1)              # IN -> OBS
    click(tool, 4)              # OBS -> unlabelled
    click(tool, 0, button=3)    # OAP -> unlabelled (backwards)
    click(tool, 2, button=2)    # the middle button does not label
    assert tool.stack_labels() == ["", "OBS", "IN", "OAP", ""]
    assert tool.selected == 0
    by_pos = {p: ax for ax, p in tool.tiles.items()}
    assert by_pos[1].get_title() == "1: OBS"
    assert matplotlib.colors.to_hex(by_pos[1].spines["top"].get_edgecolor()) == "#d55e00"


def test_navigation_moves_between_stacks_and_stops_at_the_ends(ds, fig):
    tool = LabelTool(ds, fig=fig)
    key(tool, "left")
    assert tool.current == ("P01", "ED") and "first stack" in tool.status_text()
    key(tool, "right")
    assert tool.current == ("P01", "ES")
    key(tool, "n")
    key(tool, "n")
    assert tool.current == ("P02", "ES") and "stack 4/4" in tool.status_text()
    key(tool, "n")
    assert tool.current == ("P02", "ES") and "last stack" in tool.status_text()
    key(tool, "p")
    assert tool.current == ("P02", "ED")
    assert tool.stack_labels() == [""] * 5 and len(tool.tiles) == 5


def test_matplotlib_default_keys_are_off(ds, fig):
    tool = LabelTool(ds, fig=fig)
    key(tool, "l", pos=0)   # matplotlib's default: log y scale on the Axes under the pointer
    key(tool, "k", pos=0)
    ax = next(a for a, p in tool.tiles.items() if p == 0)
    assert ax.get_yscale() == "linear" and ax.get_xscale() == "linear"


def test_save_writes_only_labels_atomically_with_backup(ds, fig):
    before_bytes = (ds / MANIFEST).read_bytes()
    before = read_manifest(ds)
    tool = LabelTool(ds, fig=fig)
    key(tool, "3", pos=3)
    key(tool, "s")
    assert "[saved]" in tool.status_text() and tool.unsaved == 0
    assert (ds / BACKUP).read_bytes() == before_bytes
    after = read_manifest(ds)
    expected = before.copy()
    expected.loc[3, "label"] = "OBS"
    pd.testing.assert_frame_equal(after, expected)
    assert not list(ds.glob(".*.tmp"))  # no temporary file left behind
    meta = read_dataset_json(ds)
    assert meta["manifest_sha256"] == file_sha256(ds / MANIFEST)
    assert meta["counts"]["label"] == {"IN": 2, "OAP": 1, "OBS": 2, "unlabelled": 15}
    # undoing the change gives back the original file byte for byte
    key(tool, "0", pos=3)
    key(tool, "s")
    assert (ds / MANIFEST).read_bytes() == before_bytes
    key(tool, "s")
    assert "nothing to save" in tool.status_text()


def test_navigation_saves_unsaved_changes(ds, fig):
    tool = LabelTool(ds, fig=fig)
    key(tool, "2", pos=3)
    key(tool, "right")
    assert read_manifest(ds).label.tolist()[:5] == ["OAP", "IN", "IN", "IN", "OBS"]
    assert (ds / BACKUP).is_file() and tool.unsaved == 0


def test_unreadable_image_keeps_the_current_stack(ds, fig):
    tool = LabelTool(ds, fig=fig)
    (ds / "images" / "P01_ES_s02.png").write_bytes(b"not a png")
    key(tool, "right")
    assert tool.current == ("P01", "ED") and len(tool.tiles) == 5
    assert "error: unreadable or truncated image file" in tool.status_text()
    assert "stack 1/4" in tool.status_text()


def test_state_file_resumes_on_the_same_stack(ds, fig):
    tool = LabelTool(ds, fig=fig)
    key(tool, "right")
    key(tool, "right")
    assert json.loads((ds / STATE_FILE).read_text()) == {"patient": "P02", "frame": "ED"}
    again = LabelTool(ds, fig=plt.figure())
    assert again.current == ("P02", "ED")
    assert LabelTool(ds, fig=plt.figure(), start=("P01", "ES")).current == ("P01", "ES")
    with pytest.raises(DataPrepError, match="P09/ED: no such patient/frame"):
        LabelTool(ds, fig=plt.figure(), start=("P09", "ED"))


def test_unreadable_state_file_starts_at_the_first_stack(ds, fig, capsys):
    (ds / STATE_FILE).write_text("{not json")
    assert LabelTool(ds, fig=fig).current == ("P01", "ED")
    assert STATE_FILE in capsys.readouterr().err


def test_q_saves_and_closes(ds, fig):
    tool = LabelTool(ds, fig=fig)
    key(tool, "1", pos=3)
    key(tool, "q")
    assert not plt.fignum_exists(fig.number)
    assert read_manifest(ds).label[3] == "OAP"


def test_closing_the_window_saves(ds, fig):
    tool = LabelTool(ds, fig=fig)
    click(tool, 3)
    fig.canvas.callbacks.process("close_event", CloseEvent("close_event", fig.canvas))
    assert read_manifest(ds).label[3] == "OAP"


def test_manifest_changed_on_disk_is_not_overwritten(ds, fig):
    tool = LabelTool(ds, fig=fig)
    key(tool, "1", pos=3)
    (ds / MANIFEST).write_bytes((ds / MANIFEST).read_bytes().replace(b"toy", b"TOY"))
    key(tool, "s")
    assert "error:" in tool.status_text() and "changed on disk" in tool.status_text()
    assert b"TOY" in (ds / MANIFEST).read_bytes() and not (ds / BACKUP).exists()


def test_other_class_lists_come_from_dataset_json(tmp_path, fig):
    ds = make_dataset(tmp_path / "ds", classes=("normal", "abnormal"), labels=["normal", "", "", "", "abnormal"])
    tool = LabelTool(ds, fig=fig)
    assert "1=normal  2=abnormal  0/u=clear" in tool.status_text()
    key(tool, "2", pos=1)
    key(tool, "3", pos=2)
    click(tool, 4)
    assert tool.stack_labels() == ["normal", "abnormal", "", "", ""]


def test_unwritable_directory_is_refused(ds, fig, monkeypatch):
    monkeypatch.setattr("data_prep.label.os.access", lambda path, mode: False)
    with pytest.raises(DataPrepError, match="not writable"):
        LabelTool(ds, fig=fig)


def test_renders_a_readable_png(ds, fig, tmp_path):
    tool = LabelTool(ds, fig=fig)
    hover(tool, 2)
    out = tmp_path / "label_gui.png"
    tool.fig.savefig(out)
    img = plt.imread(out)
    assert img.shape[:2] == (340, 520)
    # the OAP tile's blue outline is drawn
    assert (np.abs(img[..., :3] - np.array([0x00, 0x72, 0xB2]) / 255).max(axis=-1) < 0.02).sum() > 50


# ---- command line --------------------------------------------------------------------------------------------

def test_cli_rejects_a_non_dataset_dir_with_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "data_prep.label", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "MPLBACKEND": "Agg"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"data_prep.label: error: {tmp_path} is not a dataset directory: manifest.csv is missing "
        f"(make one with `python -m data_prep ...`)"]


def test_cli_bad_start_and_no_display_exit_2(ds, capsys):
    assert main([str(ds), "--start", "P01"]) == 2
    assert "expected PATIENT/FRAME" in capsys.readouterr().err
    assert main([str(ds), "--start", "P01/XX"]) == 2
    assert "P01/XX: no such patient/frame" in capsys.readouterr().err
    assert main([str(ds)]) == 2  # the tests run on Agg, which cannot open a window
    assert "cannot open a window" in capsys.readouterr().err
    assert plt.get_fignums() == []


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--start PATIENT/FRAME" in capsys.readouterr().out

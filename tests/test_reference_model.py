"""The released reference model (benchmark/reference/): its files match their checksums, a damaged copy is refused,
and `predict` without --model reproduces the committed predictions on a Sunnybrook study."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark.predict import load, main
from benchmark.errors import BenchmarkInputError

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference_scd0000101"


def test_reference_files_match_their_checksums():
    load.check_reference()
    names = {line.split(maxsplit=1)[1] for line in (load.REFERENCE / load.SUMS).read_text().splitlines()}
    assert {"model/model.keras", "model/model.json", "MODEL_CARD.md"} <= names


def test_a_damaged_reference_model_is_refused(tmp_path):
    copy = tmp_path / "reference"
    shutil.copytree(load.REFERENCE, copy)
    data = bytearray((copy / "model" / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model" / "model.keras").write_bytes(bytes(data))
    with pytest.raises(BenchmarkInputError, match="model.keras: does not match its sha256"):
        load.check_reference(copy)


def test_model_card_reports_the_baseline_beside_the_model():
    card = (load.REFERENCE / "MODEL_CARD.md").read_text()
    assert "every slice IN" in card and "95 %" in card
    meta = json.loads((load.REFERENCE_MODEL / "model.json").read_text())
    assert f"depth {meta['depth']}" in card and meta["decoding"]["kind"] in card
    assert all(digest in card for digest in ((load.REFERENCE / load.SUMS).read_text().split()[::2][:2]))


@pytest.mark.slow
@pytest.mark.realdata
def test_predict_without_model_reproduces_the_reference_predictions(shared_data, tmp_path, capsys):
    out = tmp_path / "predictions"
    assert main([str(shared_data / "sunnybrook" / "SCD0000101"), "--out", str(out)]) == 0
    assert "every slice IN (baseline)" in capsys.readouterr().out
    got, want = pd.read_csv(out / "predictions.csv"), pd.read_csv(FIXTURE / "predictions.csv")
    labels = ["patient", "frame", "slice", "n_slices", "argmax", "monotone"]
    pd.testing.assert_frame_equal(got[labels], want[labels])
    probs = [c for c in want if c.startswith("p_")]
    np.testing.assert_allclose(got[probs].to_numpy(), want[probs].to_numpy(), atol=1e-4)
    ranges = json.loads((out / "ranges.json").read_text())["stacks"]
    expected = json.loads((FIXTURE / "ranges.json").read_text())["stacks"]
    assert [(s["monotone"], s["every_slice_in"]) for s in ranges] == \
        [(s["monotone"], s["every_slice_in"]) for s in expected]

"""data_prep.orientation on hand-built label volumes whose areas (and so every cue) are computed by hand."""
import json

import numpy as np
import pytest

from data_prep.orientation import apex_first, relative_trend
from label_volumes import mask_from_areas


def volume(lv, myo, rv, shape=(10, 10)):
    """A label volume whose slice k has lv[k] LV-cavity, myo[k] myocardium and rv[k] RV pixels."""
    return mask_from_areas(list(zip(lv, myo, rv)), shape)


# base first: cavity shrinks, myocardium tapers, RV vanishes, a myocardial cap beyond the last cavity slice
BASE_FIRST = volume(lv=[30, 20, 10, 0], myo=[20, 15, 10, 5], rv=[20, 10, 0, 0])


@pytest.mark.parametrize("areas, expected", [
    ([10, 20, 30], 2 / 3),      # slope 10 x span 2 / max 30
    ([30, 20, 10], -2 / 3),
    ([20, 10, 0, 0], -1.05),    # slope -7 (cov -35 / var 5) x span 3 / max 20
    ([7], 0.0),                 # one slice has no trend
    ([0, 0, 0], 0.0),           # nothing to scale by
])
def test_relative_trend(areas, expected):
    assert relative_trend(np.array(areas)) == pytest.approx(expected)


def test_base_first_stack_has_its_apex_at_the_end():
    first, evidence, ambiguous = apex_first(BASE_FIRST)
    assert first is False and ambiguous is False
    assert evidence["lv_cavity_trend"] == pytest.approx(-2 / 3, abs=1e-4)     # [30, 20, 10] over the cavity
    assert evidence["myocardium_trend"] == pytest.approx(-0.75, abs=1e-4)     # slope -5 x 3 / 20
    assert evidence["rv_trend"] == pytest.approx(-1.05, abs=1e-4)
    assert (evidence["apical_caps_start"], evidence["apical_caps_end"]) == (0, 1)
    assert evidence["votes"] == {"lv_cavity_trend": -1, "myocardium_trend": -1, "rv_trend": -1, "apical_cap": -1}
    assert evidence["apex_first"] is False and evidence["ambiguous"] is False
    json.dumps(evidence)


def test_reversed_stack_has_its_apex_first_with_mirrored_evidence():
    first, evidence, ambiguous = apex_first(BASE_FIRST[::-1])
    assert first is True and ambiguous is False
    assert evidence["lv_cavity_trend"] == pytest.approx(2 / 3, abs=1e-4)
    assert evidence["rv_trend"] == pytest.approx(1.05, abs=1e-4)
    assert (evidence["apical_caps_start"], evidence["apical_caps_end"]) == (1, 0)
    assert set(evidence["votes"].values()) == {1}


def test_majority_wins_over_a_disagreeing_cavity_and_the_stack_is_ambiguous():
    # an apical aneurysm: the cavity widens towards the apex while myocardium and RV say otherwise
    vol = volume(lv=[10, 20, 30], myo=[30, 20, 10], rv=[30, 15, 0])
    first, evidence, ambiguous = apex_first(vol)
    assert evidence["votes"] == {"lv_cavity_trend": 1, "myocardium_trend": -1, "rv_trend": -1, "apical_cap": 0}
    assert first is False and ambiguous is True


def test_one_voting_cue_is_too_weak():
    # cavity 2/3 trend votes; myocardium flat, RV absent, no cap: a single vote
    first, evidence, ambiguous = apex_first(volume(lv=[10, 20, 30], myo=[20, 20, 20], rv=[0, 0, 0]))
    assert evidence["votes"] == {"lv_cavity_trend": 1, "myocardium_trend": 0, "rv_trend": 0, "apical_cap": 0}
    assert first is True and ambiguous is True


def test_trends_below_the_threshold_do_not_vote():
    # cavity [20, 22, 24]: 4/24 = 0.167 < 0.2
    _, evidence, _ = apex_first(volume(lv=[20, 22, 24], myo=[20, 20, 20], rv=[0, 0, 0]))
    assert evidence["lv_cavity_trend"] == pytest.approx(1 / 6, abs=1e-4)
    assert evidence["votes"]["lv_cavity_trend"] == 0


def test_a_tie_goes_to_the_summed_trend_scores():
    # votes: cavity +1 (2/3) and cap +1 against myocardium -1 (slope -6.5 x 3 / 30 = -0.65) and RV -1 (-1.05)
    vol = volume(lv=[0, 10, 20, 30], myo=[30, 20, 15, 10], rv=[20, 10, 0, 0])
    first, evidence, ambiguous = apex_first(vol)
    assert evidence["votes"] == {"lv_cavity_trend": 1, "myocardium_trend": -1, "rv_trend": -1, "apical_cap": 1}
    assert evidence["myocardium_trend"] == pytest.approx(-0.65, abs=1e-4)
    assert first is False and ambiguous is True


def test_no_evidence_keeps_the_file_order_and_is_ambiguous():
    first, evidence, ambiguous = apex_first(volume(lv=[10, 10], myo=[10, 10], rv=[5, 5]))
    assert set(evidence["votes"].values()) == {0}
    assert first is True and ambiguous is True


def test_a_stack_without_cavity_gives_no_cavity_evidence():
    first, evidence, ambiguous = apex_first(volume(lv=[0, 0, 0], myo=[30, 20, 10], rv=[20, 10, 0]))
    assert evidence["lv_cavity_trend"] == 0 and evidence["apical_caps_end"] == 0
    assert first is False and ambiguous is False


def test_rejects_a_single_slice():
    with pytest.raises(ValueError, match="slice, H, W"):
        apex_first(np.zeros((8, 8), dtype=np.uint8))

import itertools

import numpy as np
import pandas as pd
import pytest

from benchmark.decode import decode_stacks, in_range, monotone_decode


def brute_force(proba):
    """Best OAP^i IN^(j-i) OBS^(n-j) by trying every (i, j), scoring each labelling slice by slice."""
    logp = np.log(np.clip(proba, 1e-12, 1.0))
    n = len(proba)
    best, best_labels = -np.inf, None
    for i, j in itertools.combinations_with_replacement(range(n + 1), 2):
        labels = np.array([0] * i + [1] * (j - i) + [2] * (n - j))
        score = logp[np.arange(n), labels].sum()
        if score > best:
            best, best_labels = score, labels
    return best, best_labels


def test_hand_computed_non_monotone_stack():
    proba = np.array([[.7, .2, .1], [.1, .2, .7], [.1, .8, .1], [.1, .1, .8]])
    # argmax OAP OBS IN OBS is not monotone. Products of the candidates:
    # OAP IN IN OBS = .7*.2*.8*.8 = .0896, OAP OBS OBS OBS = .7*.7*.1*.8 = .0392, OAP OAP IN OBS = .7*.1*.8*.8 = .0448
    assert monotone_decode(proba).tolist() == [0, 1, 1, 2]


def test_isolated_obs_inside_in_is_absorbed():
    proba = np.array([[.1, .8, .1], [.1, .3, .6], [.1, .8, .1]])
    # IN IN IN = .8*.3*.8 = .192 beats IN OBS OBS = .8*.6*.1 = .048
    assert monotone_decode(proba).tolist() == [1, 1, 1]


def test_ties_go_to_longest_oap_then_longest_in():
    assert monotone_decode(np.full((4, 3), 1 / 3)).tolist() == [0, 0, 0, 0]
    oap_in_tie = np.array([[.9, .05, .05], [.45, .45, .1], [.05, .9, .05]])
    assert monotone_decode(oap_in_tie).tolist() == [0, 0, 1]
    in_obs_tie = np.array([[.05, .9, .05], [.1, .45, .45], [.05, .05, .9]])
    assert monotone_decode(in_obs_tie).tolist() == [1, 1, 2]


def test_all_in_and_empty_runs():
    assert monotone_decode(np.tile([.1, .8, .1], (5, 1))).tolist() == [1] * 5
    assert monotone_decode(np.tile([.1, .1, .8], (3, 1))).tolist() == [2] * 3
    assert monotone_decode(np.array([[.8, .1, .1], [.1, .1, .8]])).tolist() == [0, 2]


def test_single_slice_and_empty_stack():
    assert monotone_decode([[.2, .5, .3]]).tolist() == [1]
    assert monotone_decode([[.4, .3, .3]]).tolist() == [0]
    assert monotone_decode(np.empty((0, 3))).tolist() == []


def test_zero_probabilities_are_clipped_not_infinite():
    assert monotone_decode([[0, 1, 0], [0, 0, 1]]).tolist() == [1, 2]


def test_bad_input_raises():
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        monotone_decode(np.ones((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        monotone_decode([[np.nan, .5, .5]])


def test_monotone_argmax_returned_unchanged():
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(1, 13))
        i, j = np.sort(rng.integers(0, n + 1, size=2))
        labels = np.array([0] * i + [1] * (j - i) + [2] * (n - j))
        proba = rng.dirichlet(np.ones(3), size=n)
        proba[np.arange(n), labels] += 1.0  # make the monotone labelling the argmax
        proba /= proba.sum(axis=1, keepdims=True)
        assert monotone_decode(proba).tolist() == labels.tolist()


def test_agrees_with_brute_force_on_random_stacks():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 13))
        proba = rng.dirichlet(np.full(3, 0.5), size=n)
        best, labels = brute_force(proba)
        decoded = monotone_decode(proba)
        score = np.log(np.clip(proba, 1e-12, 1.0))[np.arange(n), decoded].sum()
        assert score == pytest.approx(best, abs=1e-9)
        assert decoded.tolist() == labels.tolist()


def test_tie_rule_agrees_with_brute_force_on_tied_stacks():
    # Rows from a palette full of within-row ties make many labellings equally probable; among those within
    # rounding of the best, the lexicographically smallest sequence is the one with the largest (i, j).
    palette = np.array([[1 / 3, 1 / 3, 1 / 3], [.5, .5, 0], [0, .5, .5], [.5, 0, .5], [.25, .5, .25], [1, 0, 0]])
    rng = np.random.default_rng(4)
    for _ in range(200):
        n = int(rng.integers(1, 9))
        proba = palette[rng.integers(0, len(palette), size=n)]
        logp = np.log(np.clip(proba, 1e-12, 1.0))
        scored = [(logp[np.arange(n), np.array([0] * i + [1] * (j - i) + [2] * (n - j))].sum(), i, j)
                  for i, j in itertools.combinations_with_replacement(range(n + 1), 2)]
        best = max(s for s, _, _ in scored)
        i, j = max((i, j) for s, i, j in scored if s >= best - 1e-9)
        assert monotone_decode(proba).tolist() == [0] * i + [1] * (j - i) + [2] * (n - j)


def test_decode_stacks_preserves_shuffled_row_order():
    rng = np.random.default_rng(2)
    rows = []
    for patient, frame, n in [("p1", "ED", 7), ("p1", "ES", 5), ("p2", "ED", 9), ("p3", "ED", 1)]:
        proba = rng.dirichlet(np.ones(3), size=n)
        expected = monotone_decode(proba)
        rows += [dict(patient=patient, frame=frame, slice=s, p=proba[s], expected=expected[s]) for s in range(n)]
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert not table["slice"].is_monotonic_increasing  # the shuffle really mixes the stacks
    decoded = decode_stacks(np.stack(table["p"]), table)
    assert decoded.tolist() == table["expected"].tolist()
    as_arrays = decode_stacks(np.stack(table["p"]), (table["patient"], table["frame"], table["slice"]))
    assert as_arrays.tolist() == decoded.tolist()


def test_decode_stacks_rejects_duplicate_slices():
    table = pd.DataFrame({"patient": ["a", "a"], "frame": ["ED", "ED"], "slice": [0, 0]})
    with pytest.raises(ValueError, match="patient a frame ED slice 0"):
        decode_stacks(np.full((2, 3), 1 / 3), table)


def test_in_range():
    assert in_range([0, 1, 1, 2]) == (1, 2)
    assert in_range([1]) == (0, 0)
    assert in_range([0, 0, 2]) is None
    assert in_range([1, 0, 1]) == (0, 2)  # span of a non-monotone labelling, gap included

"""Splits and folds never share a patient; oversampling and training slots; view angles are pure."""
from __future__ import annotations

import numpy as np
import pytest

from benchmark.data import Dataset, Slots, make_folds, oversample_factors, train_test_split, view_angle
from benchmark.errors import BenchmarkInputError


@pytest.fixture(scope="module")
def ds(tiny_synthetic):
    return Dataset.load(tiny_synthetic)


def test_no_patient_in_two_splits(ds):
    pool, test = train_test_split(ds, 0.25, seed=0)
    patients = ds.rows.patient.to_numpy()
    assert not set(patients[pool]) & set(patients[test])
    assert len(np.intersect1d(pool, test)) == 0 and len(pool) + len(test) == len(ds.rows)
    folds = make_folds(ds, pool, 3, seed=0)
    seen = []
    for tr, va in folds:
        assert not set(patients[tr]) & set(patients[va])
        assert not set(patients[va]) & set(patients[test])
        seen.append(va)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), pool)  # every pool row validates exactly once


def test_split_is_seeded(ds):
    a = train_test_split(ds, 0.25, seed=1)
    b = train_test_split(ds, 0.25, seed=1)
    np.testing.assert_array_equal(a[1], b[1])


def test_test_data_sharing_a_patient_is_refused(ds):
    with pytest.raises(BenchmarkInputError, match="shares 8 patient"):
        train_test_split(ds, None, 0, test_ds=ds)


def test_oversample_factors_spare_the_majority_class():
    y = np.array([0, 1, 1, 1, 2, 1])
    np.testing.assert_array_equal(oversample_factors(y, 3, 6), [6, 1, 6])


def test_slots_repeat_rows_with_copy_index(ds):
    rows = np.array([0, 1, 2])
    factors = np.array([3, 1, 2])
    y = ds.rows.y.to_numpy()
    slots = Slots.build(ds, rows, factors)
    assert len(slots) == sum(factors[y[r]] for r in rows)
    for r in rows:
        np.testing.assert_array_equal(slots.copies[slots.rows == r], np.arange(factors[y[r]]))


def test_view_angle_is_pure_and_bounded():
    angles = [view_angle(0, r, c, d, 45.0) for r in range(5) for c in range(3) for d in range(3)]
    assert all(-45 <= a <= 45 for a in angles) and len(set(angles)) == len(angles)
    assert view_angle(0, 1, 2, 3, 45.0) == view_angle(0, 1, 2, 3, 45.0)
    assert view_angle(0, 1, 2, 3, 0.0) == 0.0


def test_2p5d_neighbours_follow_the_stack(ds):
    """Channels are (slice - 1, slice, slice + 1) of the same stack; stack ends repeat the slice itself."""
    rows = ds.rows
    for i in (0, 1, int(rows.n_slices.iloc[0]) - 1):
        apex, mid, base = ds.channels(i, "2.5d")
        s = rows.slice.iloc[i]
        same = rows[(rows.patient == rows.patient.iloc[i]) & (rows.frame == rows.frame.iloc[i])]

        def expect(k):
            return ds.native(int(same.index[same.slice == k][0])) if k in set(same.slice) else ds.native(i)
        np.testing.assert_array_equal(mid, ds.native(i))
        np.testing.assert_array_equal(apex, expect(s - 1))
        np.testing.assert_array_equal(base, expect(s + 1))

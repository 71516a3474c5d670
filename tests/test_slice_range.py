"""Decoding chosen on validation, the baselines, and the stack-context model: hand-computed cases."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from benchmark.baselines import (
    CONSTANT,
    POSITION,
    PositionModel,
    baseline_metrics,
    baseline_predictions,
    position_features,
)
from benchmark.decode import (
    IN,
    OAP,
    OBS,
    Decoding,
    stack_groups,
    stack_range_hits,
    stack_table,
    tune_decoding,
)
from benchmark.metrics import classification_metrics, paired_range_difference, range_metrics


def stacks_frame(lengths: list[int]) -> pd.DataFrame:
    return pd.DataFrame([{"patient": f"p{i}", "frame": "ED", "slice": s, "n_slices": n}
                         for i, n in enumerate(lengths) for s in range(n)])


def test_decoding_offsets_shift_the_decision_by_hand():
    # p(OAP) 0.4 vs p(IN) 0.6 at the apex: argmax says IN; +1 on log p(OAP) makes it 0.4e / (0.4e + 0.6) = 0.644
    proba = np.array([[0.4, 0.6, 0.0], [0.1, 0.9, 0.0], [0.0, 0.7, 0.3]])
    table = stacks_frame([3])
    assert Decoding().apply(proba, table).tolist() == [IN, IN, IN]
    shifted = Decoding("monotone", (1.0, 0.0, 0.0))
    np.testing.assert_allclose(shifted.shifted(proba)[0], [0.4 * np.e / (0.4 * np.e + 0.6), 0.6 / (0.4 * np.e + 0.6),
                                                           0.0], atol=1e-9)
    assert shifted.apply(proba, table).tolist() == [OAP, IN, IN]
    assert Decoding("argmax", (0.0, 0.0, -2.0)).apply(proba, table).tolist() == [IN, IN, IN]
    assert Decoding.from_dict(shifted.to_dict()) == shifted
    with pytest.raises(ValueError, match="decoding kind"):
        Decoding("viterbi")


def test_stack_range_hits_agree_with_range_metrics():
    rng = np.random.default_rng(0)
    table = stacks_frame([5, 7, 4, 6, 8])
    y = np.concatenate([[OAP, IN, IN, IN, OBS], [IN] * 7, [OAP, OAP, IN, IN], [IN, IN, IN, IN, OBS, OBS],
                        [OAP, IN, IN, IN, IN, IN, IN, IN]])
    for _ in range(20):
        pred = rng.integers(0, 3, len(y))
        exact, within = stack_range_hits(y, pred, stack_groups(stack_table(table, len(y))))
        m = range_metrics(y, pred, table)
        assert exact.mean() == pytest.approx(m["range_exact"]) and within.mean() == pytest.approx(m["range_within1"])


def test_tune_decoding_finds_the_offset_the_validation_stacks_need():
    # every stack starts with an OAP slice that the model gives only p(OAP) = 0.3: plain monotone misses all of
    # them, an OAP offset >= log(0.7 / 0.3) = 0.85 gets every range exact, and the smallest such grid offset wins
    n, stacks = 6, 10
    table = stacks_frame([n] * stacks)
    y = np.tile([OAP] + [IN] * (n - 1), stacks)
    proba = np.tile([[0.3, 0.7, 0.0]] + [[0.05, 0.9, 0.05]] * (n - 1), (stacks, 1))
    decoding, record = tune_decoding(proba, y, table, grid=(0.0, 0.5, 1.0, 2.0))
    assert decoding == Decoding("monotone", (1.0, 0.0, 0.0))
    assert record["val_range_exact"] == 1.0 and record["val_range_exact_plain_monotone"] == 0.0
    assert record["n_stacks"] == stacks


def test_tune_decoding_keeps_plain_monotone_without_evidence():
    table = stacks_frame([4, 4])
    y = np.full(8, IN)
    proba = np.tile([0.1, 0.8, 0.1], (8, 1))
    assert tune_decoding(proba, y, table)[0] == Decoding()


def test_position_features_by_hand():
    f = position_features(stacks_frame([6]))
    np.testing.assert_allclose(f[:, 0], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert f[:, 1].tolist() == [1, 0, 0, 0, 0, 0] and f[:, 2].tolist() == [0, 0, 0, 0, 0, 1]
    np.testing.assert_allclose(f[:, 3], [0, 0.25, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(f[:, 4], [1, 1, 0.75, 0.5, 0.25, 0])
    assert position_features(stacks_frame([1]))[0].tolist() == [0, 1, 1, 0, 0]


def test_baselines_scored_on_the_test_stacks():
    # training stacks: the first slice is OAP, the last OBS, in every stack; so the position model learns both ends
    train = stacks_frame([6] * 8)
    y_train = np.tile([OAP, IN, IN, IN, IN, OBS], 8)
    folds = [(np.arange(24, 48), np.arange(24)), (np.arange(24), np.arange(24, 48))]
    test = stacks_frame([6, 6])
    y_test = np.concatenate([[OAP, IN, IN, IN, IN, OBS], [IN] * 6])
    preds = baseline_predictions(train, y_train, folds, test, 3)
    assert preds[CONSTANT][1].tolist() == [IN] * 12
    assert preds[POSITION][1][:6].tolist() == [OAP, IN, IN, IN, IN, OBS]
    m = baseline_metrics(preds, y_test, test, ("OAP", "IN", "OBS"))
    # the constant gets the stack without outer slices exactly, and is one slice off at both ends of the other
    assert m[CONSTANT]["range_exact"] == 0.5 and m[CONSTANT]["range_within1"] == 1.0
    assert m[CONSTANT]["boundary_mae"] == pytest.approx(0.5)
    assert m[POSITION]["range_exact"] == 0.5 and m[POSITION]["n_stacks"] == 2
    assert m[POSITION]["decoding"]["tuned_on"] == "out-of-fold validation predictions"


def test_position_model_of_one_class_predicts_it():
    rows = stacks_frame([3])
    p = PositionModel(3).fit(rows, np.full(3, IN)).predict_proba(rows)
    assert (p.argmax(1) == IN).all() and np.allclose(p.sum(1), 1)


def test_stack_model_labels_a_stack_alike_alone_or_padded_in_a_batch():
    import keras

    from benchmark.stack import (
        build_stack_model,
        padded,
        predict_stacks,
        unpad,
        with_scaling,
    )
    keras.utils.set_random_seed(0)
    model = with_scaling(build_stack_model(4, 3, hidden=8, dropout=0.3, seed=1), np.zeros(4), np.ones(4))
    features = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    rows = stacks_frame([3, 6])
    pos = position_features(rows)
    groups = [np.arange(3), np.arange(3, 9)]
    batch = unpad(np.asarray(model(padded(groups, np.arange(9), features, pos, None, 3))), groups, 9)

    class Rows:  # what predict_stacks reads of a Dataset
        def __init__(self, rows):
            self.rows = rows

        def stacks(self, idx):
            return self.rows.loc[idx, ["patient", "frame", "slice"]].reset_index(drop=True)

    alone = predict_stacks(model, Rows(rows), np.arange(9), features, np.arange(9), 3)
    np.testing.assert_allclose(batch, alone, atol=1e-5)
    np.testing.assert_allclose(alone.sum(1), 1, atol=1e-5)


# ---- several sources in one experiment ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    from data_prep import synthetic
    root = tmp_path_factory.mktemp("sources")
    return (synthetic.generate(root / "phantom_a", patients=6, seed=1),
            synthetic.generate(root / "phantom_b", patients=6, seed=2))


def test_several_sources_make_one_dataset_with_prefixed_patients(two_sources):
    from benchmark.data import SOURCE_SET, Dataset
    a, b = two_sources
    ds = Dataset.load_many([a, b])
    one, other = Dataset.load(a), Dataset.load(b)
    assert len(ds.rows) == len(one.rows) + len(other.rows)
    assert set(ds.rows[SOURCE_SET]) == {"phantom_a", "phantom_b"}
    assert set(ds.rows.patient) == {f"phantom_a/{p}" for p in one.rows.patient} | \
        {f"phantom_b/{p}" for p in other.rows.patient}
    # images resolve wherever they came from: the same pixels as the single-source Dataset
    first_b = int(np.flatnonzero(ds.sources == "phantom_b")[0])
    np.testing.assert_array_equal(ds.native(first_b), other.native(0))
    assert Dataset.load_many([a]).manifest_sha256 == one.manifest_sha256  # one source: the plain Dataset


def test_several_sources_are_stratified_and_refused_when_they_clash(two_sources, tmp_path):
    import shutil

    from benchmark.data import Dataset, make_folds, train_test_split
    from benchmark.errors import BenchmarkInputError
    from benchmark.grid import _load_split
    a, b = two_sources
    ds = Dataset.load_many([a, b])
    pool, test = train_test_split(ds, 0.34, 0, n_folds=2)
    held = set(ds.sources[test])
    assert held == {"phantom_a", "phantom_b"}  # each source is held out in proportion, not one source alone
    for tr, va in make_folds(ds, pool, 2, 0):
        assert set(ds.sources[va]) == {"phantom_a", "phantom_b"}
    same_name = tmp_path / "x" / "phantom_a"
    shutil.copytree(a, same_name)
    with pytest.raises(BenchmarkInputError, match="share a name"):
        Dataset.load_many([a, same_name])
    with pytest.raises(BenchmarkInputError, match="also in --data"):
        _load_split([a, b], 0, [b], None, None, 2)


def test_intensity_augmentation_by_hand():
    from benchmark.data import Augmentation, view_gamma
    from benchmark.preprocess import gamma_curve
    img = np.array([[0.0, 63.75, 127.5, 255.0]], np.float32)
    np.testing.assert_allclose(gamma_curve(img, 2.0), [[0.0, 15.9375, 63.75, 255.0]], rtol=1e-6)
    assert gamma_curve(img, 1.0) is img
    g = [view_gamma(0, r, c, d, 0.4) for r in range(4) for c in range(2) for d in range(3)]
    assert all(np.exp(-0.4) <= x <= np.exp(0.4) for x in g) and len(set(g)) == len(g)
    assert view_gamma(0, 1, 0, 0, 0.4) == view_gamma(0, 1, 0, 0, 0.4) and view_gamma(0, 1, 0, 0, 0.0) == 1.0
    angles, gammas = Augmentation(45.0, 0.4).of(0, [1, 1], [-1, 0], [0, 0])
    assert angles[0] == 0.0 and gammas[0] == 1.0  # the plain view is never augmented
    assert gammas[1] == view_gamma(0, 1, 0, 0, 0.4) and not Augmentation(0.0).active


# ---- out-of-fold results ------------------------------------------------------------------------------------------
CLASSES = ("OAP", "IN", "OBS")


def labelled(stacks: list[list[str]], folds: list[int]) -> "Dataset":
    """A Dataset of the given stacks (apex -> base), one patient each, with the CV fold of each stack's patient."""
    from pathlib import Path

    from benchmark.data import Dataset
    rows = pd.DataFrame([{"patient": f"p{i}", "frame": "ED", "slice": s, "label": c, "y": CLASSES.index(c),
                          "n_slices": len(stack), "fold": folds[i]}
                         for i, stack in enumerate(stacks) for s, c in enumerate(stack)])
    return Dataset(Path("src"), rows, CLASSES, "sha")


def test_cross_fitted_decoding_decodes_each_fold_as_tuned_on_the_others():
    # fold 1's stacks start with an OAP slice the model gives p(OAP) 0.3: tuned on fold 1, an OAP offset >= 1 gets
    # them right; fold 0's stacks are all IN with the same apex, where the plain monotone decoding is right. Decoded
    # cross-fitted, each fold gets the other's decoding and every range is wrong; one decoding tuned on both folds
    # (tune_decoding on all) would get half of them right
    from benchmark.evaluate import FoldDecodings, cross_fitted_decoding
    ds = labelled([["IN"] * 4] * 3 + [["OAP"] + ["IN"] * 3] * 3, [0, 0, 0, 1, 1, 1])
    proba = np.tile([[0.3, 0.7, 0.0]] + [[0.05, 0.9, 0.05]] * 3, (6, 1))
    fold = ds.rows["fold"].to_numpy()
    decoding = cross_fitted_decoding(proba, ds.rows.y.to_numpy(), ds.stacks(np.arange(24)), fold)
    assert isinstance(decoding, FoldDecodings) and decoding.decodings[1] == Decoding()
    assert decoding.decodings[0].kind == "monotone" and decoding.decodings[0].offsets[0] >= 1.0
    labels = decoding.apply(proba, ds.stacks(np.arange(24)))
    assert labels[fold == 0][::4].tolist() == [OAP] * 3 and labels[fold == 1][::4].tolist() == [IN] * 3
    assert range_metrics(ds.rows.y.to_numpy(), labels, ds.stacks(np.arange(24)))["range_exact"] == 0.0
    assert decoding.to_dict()["folds"][1] == Decoding().to_dict()
    with pytest.raises(ValueError, match="spans several folds"):
        cross_fitted_decoding(proba, ds.rows.y.to_numpy(), ds.stacks(np.arange(24)), np.arange(24) % 2)


def test_write_out_of_fold_scores_the_rows_beside_every_slice_in(tmp_path):
    from benchmark.baselines import constant_baseline
    from benchmark.evaluate import evaluate, write_out_of_fold
    from benchmark.task import Task
    # two stacks the model gets exactly, one (all IN) where it calls the apex OAP; every slice IN: only the last
    ds = labelled([["OAP", "IN", "IN", "OBS"], ["OAP", "IN", "IN"], ["IN", "IN", "IN"]], [0, 1, 1])
    rows = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8],
                      [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1],
                      [0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])
    baselines = {CONSTANT: constant_baseline(len(rows), 3)}
    m = write_out_of_fold(tmp_path, ds, rows, proba, Decoding(), baselines)
    written = pd.read_csv(tmp_path / "oof_predictions.csv")
    test_columns, _ = evaluate(ds, rows, proba, Task("classification", CLASSES), Decoding(), baselines)
    assert list(written.columns) == list(test_columns.columns) and len(written) == len(rows)
    assert list(written.decoded) == ["OAP", "IN", "IN", "OBS", "OAP", "IN", "IN", "OAP", "IN", "IN"]
    assert m == json.loads((tmp_path / "oof_metrics.json").read_text())
    assert m["decoded"]["range_exact"] == pytest.approx(2 / 3)
    assert m["baselines"][CONSTANT]["range_exact"] == pytest.approx(1 / 3)
    assert m["vs_constant"]["range_exact"]["difference"] == pytest.approx(1 / 3)
    assert (m["vs_constant"]["n_stacks"], m["vs_constant"]["n_stacks_outer"]) == (3, 2)


@pytest.mark.slow
def test_out_of_fold_files_of_every_run_agree_with_their_predictions(tiny_grid):
    """The tiny grid (conftest): each run's oof_predictions.csv has one row per training-pool slice, the columns
    of test_predictions.csv, and scores as oof_metrics.json says; summary.md shows the out-of-fold columns."""
    _, out, _ = tiny_grid
    folds = pd.read_csv(out / "folds.csv", keep_default_na=False)
    pool = folds[folds.role.str.startswith("fold")]
    index = {c: i for i, c in enumerate(CLASSES)}
    for run in ("mobilenet_d0", "mobilenet_d0+stack", "mobilenet_d1", "cbr_tiny"):
        oof = pd.read_csv(out / run / "oof_predictions.csv", keep_default_na=False)
        assert list(oof.columns) == list(pd.read_csv(out / run / "test_predictions.csv", nrows=1).columns), run
        assert len(oof) == len(pool)
        assert sorted(zip(oof.patient, oof.frame, oof.slice)) == sorted(zip(pool.patient, pool.frame, pool.slice))
        m = json.loads((out / run / "oof_metrics.json").read_text())
        y = oof.label.map(index).to_numpy()
        stacks = oof[["patient", "frame", "slice"]]
        labels = {c: oof[c].map(index).to_numpy() for c in ("prediction", "decoded", "baseline_every_in",
                                                              "baseline_position")}
        for column, scores in (("decoded", m["decoded"]), ("baseline_every_in", m["baselines"][CONSTANT]),
                               ("baseline_position", m["baselines"][POSITION])):
            recomputed = range_metrics(y, labels[column], stacks)
            for key in ("range_exact", "range_within1", "boundary_mae", "n_stacks"):
                assert recomputed[key] == pytest.approx(scores[key], nan_ok=True), (run, column, key)
        assert classification_metrics(y, oof[["p_OAP", "p_IN", "p_OBS"]].to_numpy(), CLASSES,
                                      y_pred=labels["prediction"])["confusion"] == m["confusion"]
        paired = paired_range_difference(y, labels["decoded"], labels["baseline_every_in"], stacks)
        assert paired == m["vs_constant"], run  # the same seeded bootstrap of the same labels
        assert m["decoded"]["decoding"]["kind"] == "cross-fitted" and len(m["decoded"]["decoding"]["folds"]) == 2
    summary = pd.read_csv(out / "summary.csv").set_index("run")
    assert summary.loc["mobilenet_d1", "oof_range_exact"] == pytest.approx(
        json.loads((out / "mobilenet_d1" / "oof_metrics.json").read_text())["decoded"]["range_exact"])
    constant = summary.loc["baseline_every_in", "oof_range_exact"]
    assert constant == summary.loc["mobilenet_d1", "oof_constant_range_exact"]
    header = (out / "summary.md").read_text().splitlines()[0]
    for column in ("beats_constant", "vs_constant_range_exact", "n_stacks_outer", "oof_range_exact",
                   "oof_constant_range_exact", "oof_vs_constant_range_exact", "oof_range_within1", "oof_n_stacks"):
        assert f"| {column} |" in header, column

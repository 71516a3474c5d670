import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from benchmark.metrics import (bootstrap_ci, classification_metrics, macro_f1, paired_difference,
                               paired_range_difference, per_class_f1, per_stack_range, range_metrics,
                               regression_metrics, soft_accuracy, soft_correct, stack_ranges)

CLASSES = ("OAP", "IN", "OBS")


def confident(pred, n_classes=3):
    """Probabilities whose argmax is pred: 0.8 on the predicted class, the rest shared."""
    proba = np.full((len(pred), n_classes), 0.2 / (n_classes - 1))
    proba[np.arange(len(pred)), pred] = 0.8
    return proba


def test_f1_accuracy_confusion_on_six_samples():
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 2, 2]
    m = classification_metrics(y_true, confident(y_pred), CLASSES)
    # F1 = 2TP / (2TP + FP + FN)
    # OAP: TP 1 (#0), FP 0, FN 2 (#1, #2)  -> 2 / 4 = 0.5
    # IN:  TP 1 (#3), FP 2 (#1, #2), FN 1 (#4) -> 2 / 5 = 0.4
    # OBS: TP 1 (#5), FP 1 (#4), FN 0 -> 2 / 3
    assert m["f1_oap"] == pytest.approx(0.5)
    assert m["f1_in"] == pytest.approx(0.4)
    assert m["f1_obs"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((0.5 + 0.4 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(3 / 6)  # #0, #3, #5
    assert m["confusion"] == [[1, 2, 0], [0, 1, 1], [0, 0, 1]]
    assert (m["support_oap"], m["support_in"], m["support_obs"], m["n"]) == (3, 2, 1, 6)
    assert "soft_accuracy" not in m


def test_explicit_y_pred_overrides_argmax():
    y_true = [0, 0, 0, 1, 1, 2]
    argmax_all_oap = confident([0] * 6)
    m = classification_metrics(y_true, argmax_all_oap, CLASSES, y_pred=[0, 1, 1, 1, 2, 2])
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["f1_in"] == pytest.approx(0.4)


def test_auc_micro_and_weighted_differ_and_match_sklearn():
    y_true = np.array([0, 1, 2, 2])
    proba = np.array([[.6, .3, .1], [.5, .4, .1], [.2, .2, .6], [.3, .4, .3]])
    m = classification_metrics(y_true, proba, CLASSES)
    # Micro: 4 positive (sample, class) scores .6 .4 .6 .3 against 8 negatives .1 .1 .2 .2 .3 .3 .4 .5;
    # pairs won (ties half): .6 -> 8, .4 -> 6.5, .6 -> 8, .3 -> 5; 27.5 / 32.
    assert m["auc_micro"] == pytest.approx(27.5 / 32)
    # One-vs-rest: OAP .6 vs .5 .2 .3 -> 1; IN .4 vs .3 .2 .4 -> 2.5 / 3; OBS .6 .3 vs .1 .1 -> 1;
    # weighted by support 1, 1, 2 of 4.
    assert m["auc_weighted"] == pytest.approx(0.25 * 1 + 0.25 * 2.5 / 3 + 0.5 * 1)
    assert m["auc_micro"] == pytest.approx(roc_auc_score(np.eye(3)[y_true], proba, average="micro"))
    assert m["auc_weighted"] == pytest.approx(
        roc_auc_score(y_true, proba, multi_class="ovr", average="weighted", labels=[0, 1, 2]))
    assert abs(m["auc_micro"] - m["auc_weighted"]) > 0.05


def test_two_classes_hand_computed_auc():
    """Scores of class 1: positives 0.9, 0.4; negatives 0.6, 0.2. Of the 4 (positive, negative) pairs, 3 rank the
    positive higher (0.4 < 0.6 is the miss): AUC 3/4, for either class's one-vs-rest AUC and hence their average."""
    p1 = np.array([0.9, 0.4, 0.6, 0.2])
    m = classification_metrics([1, 1, 0, 0], np.column_stack([1 - p1, p1]), ("no", "yes"))
    assert m["auc_weighted"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(2 / 4) and m["confusion"] == [[1, 1], [1, 1]]


def test_absent_class_gives_nan_not_crash():
    y_true = [0, 0, 1, 1]
    proba = np.array([[.6, .3, .1], [.3, .6, .1], [.2, .7, .1], [.4, .5, .1]])
    m = classification_metrics(y_true, proba, CLASSES)
    # OBS: no support and never predicted -> F1 undefined; macro averages OAP (2/3) and IN (2*2/(4+1) = 0.8)
    assert math.isnan(m["f1_obs"])
    assert m["f1_oap"] == pytest.approx(2 / 3)
    assert m["f1_in"] == pytest.approx(0.8)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["support_obs"] == 0
    assert math.isnan(m["auc_weighted"])
    assert m["auc_micro"] == pytest.approx(roc_auc_score(np.eye(3)[y_true], proba, average="micro"))


def test_predicted_but_absent_class_scores_zero_f1():
    m = classification_metrics([0, 0, 1, 1], confident([0, 2, 1, 1]), CLASSES)
    assert m["f1_obs"] == 0.0  # one false positive, no support: defined and wrong


def test_per_class_f1_matches_sklearn_including_absent_classes():
    """The numpy F1 every validation epoch uses equals sklearn's, NaN where sklearn's zero_division=NaN gives NaN."""
    rng = np.random.default_rng(0)
    checked_nan = False
    for trial in range(300):
        n_classes = int(rng.integers(2, 6))
        n = int(rng.integers(1, 12))
        # draw from fewer classes than exist, so some are absent from truth, predictions or both
        truth = rng.integers(0, max(1, n_classes - 1), n)
        pred = rng.integers(0, n_classes, n) if trial % 2 else truth.copy()
        ours = per_class_f1(truth, pred, n_classes)
        ref = f1_score(truth, pred, labels=list(range(n_classes)), average=None, zero_division=np.nan)
        np.testing.assert_allclose(ours, ref, equal_nan=True)
        checked_nan |= bool(np.isnan(ref).any())
        mean = macro_f1(ours)
        assert mean == pytest.approx(float(np.nanmean(ref))) if np.isfinite(ref).any() else math.isnan(mean)
    assert checked_nan


def test_per_class_f1_hand_computed():
    # class 0: TP 1, FP 1, FN 0 -> 2/3; class 1: TP 1, FP 0, FN 1 -> 2/3; class 2: never seen -> NaN
    np.testing.assert_allclose(per_class_f1(np.array([0, 1, 1]), np.array([0, 1, 0]), 3), [2 / 3, 2 / 3, np.nan])
    assert macro_f1(np.array([np.nan, np.nan])) != macro_f1(np.array([np.nan, np.nan]))  # NaN, not 0


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="0..2"):
        classification_metrics([0, 3], confident([0, 1]), CLASSES)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        classification_metrics([0, 1], np.ones((2, 2)) / 2, CLASSES)


def soft_case():
    """(rows, expected correctness) of a small evaluated set; hand-checked row by row."""
    rows = [
        # patient A, frame f0, truth OAP OAP IN IN OBS OBS
        ("A", "f0", 0, 0, 1, False),  # stack end: own OAP, only neighbour s1 OAP; IN is two away at s2
        ("A", "f0", 1, 0, 1, True),   # OAP/IN boundary: neighbour s2 is IN
        ("A", "f0", 2, 1, 0, True),   # OAP/IN boundary: neighbour s1 is OAP
        ("A", "f0", 3, 1, 2, True),   # IN/OBS boundary: neighbour s4 is OBS
        ("A", "f0", 4, 2, 0, False),  # neighbours IN and OBS
        ("A", "f0", 5, 2, 1, False),  # stack end: only s4 (OBS); IN at s3 is two away
        # patient A, frame f1, truth IN OBS OBS
        ("A", "f1", 0, 1, 2, True),   # stack end matching its one neighbour
        ("A", "f1", 1, 2, 1, True),
        ("A", "f1", 2, 2, 2, True),
        # patient A, frame f2, truth IN IN: predictions match frame f0 / f1 neighbours only
        ("A", "f2", 0, 1, 0, False),  # A/f0 s0, s1 are OAP: other frame
        ("A", "f2", 1, 1, 2, False),  # A/f1 s1, s2 are OBS: other frame
        # patient B, frame f0, truth OBS OBS: predictions match patient A's slices at the same indices
        ("B", "f0", 0, 2, 0, False),  # A/f0 s0, s1 are OAP: other patient
        ("B", "f0", 1, 2, 1, False),  # A/f0 s2 is IN: other patient
        # patient C, frame f0, slice 1 not evaluated: truth OAP (s0), IN (s2)
        ("C", "f0", 0, 0, 1, False),  # s1 absent, s2 two away
        ("C", "f0", 2, 1, 1, True),
    ]
    table = pd.DataFrame(rows, columns=["patient", "frame", "slice", "truth", "pred", "expected"])
    return table.sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_soft_correct_row_by_row_in_shuffled_order():
    t = soft_case()
    assert soft_correct(t["truth"], t["pred"], t).tolist() == t["expected"].tolist()
    assert soft_accuracy(t["truth"], t["pred"], t) == pytest.approx(7 / 15)
    as_arrays = (t["patient"].to_numpy(), t["frame"].to_numpy(), t["slice"].to_numpy())
    assert soft_accuracy(t["truth"], t["pred"], as_arrays) == pytest.approx(7 / 15)


def test_classification_metrics_adds_soft_accuracy_with_stacks():
    t = soft_case()
    m = classification_metrics(t["truth"], confident(t["pred"]), CLASSES, stacks=t)
    assert m["soft_accuracy"] == pytest.approx(7 / 15)
    assert m["accuracy"] == pytest.approx(2 / 15)  # A/f1 s2 and C s2


def test_soft_accuracy_rejects_duplicate_slices():
    table = pd.DataFrame({"patient": ["a", "a"], "frame": ["ED", "ED"], "slice": [3, 3]})
    with pytest.raises(ValueError, match="slice 3 occurs more than once"):
        soft_accuracy([1, 1], [1, 1], table)


def range_case():
    stacks = [
        # (patient, slices, truth, prediction)
        ("P1", range(6), [0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 1, 2]),  # true 2..4, pred 1..4: errors 1, 0
        ("P2", range(4), [0, 1, 1, 2], [0, 1, 1, 2]),              # exact: errors 0, 0
        ("P3", range(5), [0, 1, 1, 1, 2], [0, 0, 0, 0, 2]),        # no IN predicted
        ("P4", range(6), [0, 1, 1, 1, 1, 2], [1, 1, 2, 1, 2, 2]),  # true 1..4, pred span 0..3: errors 1, 1
        ("P5", range(3), [0, 0, 2], [0, 1, 2]),                    # no IN in truth: not scored
        ("P6", [0, 1, 3, 4], [0, 1, 1, 2], [0, 0, 1, 1]),          # slice 2 missing: true 1..3, pred 3..4: 2, 1
    ]
    rows = [(p, "ED", s, t, q) for p, slices, truth, pred in stacks for s, t, q in zip(slices, truth, pred)]
    table = pd.DataFrame(rows, columns=["patient", "frame", "slice", "truth", "pred"])
    return table.sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_range_metrics_hand_computed():
    t = range_case()
    m = range_metrics(t["truth"], t["pred"], t)
    assert m["n_stacks"] == 5 and m["n_stacks_no_in_true"] == 1 and m["n_stacks_no_in_pred"] == 1
    assert m["range_exact"] == pytest.approx(1 / 5)    # P2
    assert m["range_within1"] == pytest.approx(3 / 5)  # P1, P2, P4; P3 has no range, P6 is 2 off
    assert m["boundary_mae_apical"] == pytest.approx((1 + 0 + 1 + 2) / 4)
    assert m["boundary_mae_basal"] == pytest.approx((0 + 0 + 1 + 1) / 4)
    assert m["boundary_mae"] == pytest.approx(6 / 8)


def test_stack_ranges_uses_slice_values():
    t = range_case()
    r = stack_ranges(t["truth"], t["pred"], t).set_index("patient")
    assert (r.loc["P6", "true_first"], r.loc["P6", "true_last"]) == (1, 3)
    assert (r.loc["P6", "pred_first"], r.loc["P6", "pred_last"]) == (3, 4)
    assert pd.isna(r.loc["P3", "pred_first"]) and pd.isna(r.loc["P5", "true_first"])


def test_range_metrics_without_any_true_range_is_nan():
    m = range_metrics([0, 2], [0, 2], (["a", "a"], ["ED", "ED"], [0, 1]))
    assert m["n_stacks"] == 0 and math.isnan(m["range_exact"]) and math.isnan(m["boundary_mae"])


def test_regression_metrics_on_four_numbers():
    m = regression_metrics([10, 12, 14, 16], [11, 12, 12, 17], train_mean=12)
    # residuals -1 0 2 -1; squares 1 0 4 1; truth mean 13, SS_tot 9 + 1 + 1 + 9 = 20
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(math.sqrt(6 / 4))
    assert m["r2"] == pytest.approx(1 - 6 / 20)
    assert m["mae_mean_baseline"] == pytest.approx((2 + 0 + 2 + 4) / 4)
    assert m["n"] == 4


def test_regression_worse_than_the_training_mean():
    m = regression_metrics([0, 2], [2, 0], train_mean=1)
    # residuals -2, 2: SS_res 8 against SS_tot 2 -> R^2 = 1 - 8 / 2; the mean is off by 1 on each slice
    assert (m["mae"], m["rmse"], m["r2"], m["mae_mean_baseline"]) == pytest.approx((2.0, 2.0, -3.0, 1.0))


def test_regression_r2_nan_for_constant_truth():
    assert math.isnan(regression_metrics([5, 5], [4, 6], train_mean=5)["r2"])


def bootstrap_case():
    rng = np.random.default_rng(5)
    groups = np.repeat([f"p{k}" for k in range(30)], rng.integers(3, 8, size=30))
    correct = rng.random(len(groups)) < 0.7
    return groups, correct


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    groups, correct = bootstrap_case()
    fn = lambda idx: correct[idx].mean()  # noqa: E731
    low, high = bootstrap_ci(fn, groups, n_boot=300, seed=7)
    assert low < correct.mean() < high
    assert bootstrap_ci(fn, groups, n_boot=300, seed=7) == (low, high)
    assert bootstrap_ci(fn, groups, n_boot=300, seed=8) != (low, high)
    assert bootstrap_ci(lambda idx: 0.25, groups, n_boot=20) == (0.25, 0.25)


def test_bootstrap_resamples_whole_patients():
    groups, _ = bootstrap_case()
    seen = []

    def fn(idx):
        seen.append(idx)
        return 0.0

    bootstrap_ci(fn, groups, n_boot=20, seed=0)
    for idx in seen:
        counts = np.bincount(idx, minlength=len(groups))
        per_patient = pd.Series(counts).groupby(groups).nunique()
        assert (per_patient == 1).all()  # every row of a patient drawn equally often
        assert pd.Series(groups[idx]).nunique() <= 30


def test_bootstrap_drops_nan_replicates():
    groups = np.array(["a", "b"])
    assert bootstrap_ci(lambda idx: math.nan, groups, n_boot=5) == pytest.approx((math.nan, math.nan), nan_ok=True)
    values = iter([math.nan, 1.0, 3.0] * 10)
    low, high = bootstrap_ci(lambda idx: next(values), groups, n_boot=30, alpha=0.5)
    assert (low, high) == (1.0, 3.0)


# ---- paired difference against every slice IN --------------------------------------------------------------------
def stacks_of(patients: list[str], labels: list[list[int]], frames: list[str] | None = None) -> pd.DataFrame:
    """One stack per entry: its patient, frame (ED unless given), slices 0.. and true labels."""
    frames = frames or ["ED"] * len(patients)
    return pd.DataFrame([(p, f, s, c) for p, f, stack in zip(patients, frames, labels) for s, c in enumerate(stack)],
                        columns=["patient", "frame", "slice", "truth"])


def test_paired_difference_of_identical_predictions_is_exactly_zero():
    t = range_case()
    d = paired_range_difference(t["truth"], t["pred"], t["pred"], t, n_boot=200, seed=1)
    for key in ("range_exact", "range_within1", "boundary_mae"):
        assert (d[key]["difference"], d[key]["lo"], d[key]["hi"]) == (0.0, 0.0, 0.0), key


def test_paired_difference_against_every_slice_in_by_hand():
    # range_case plus P7, all IN and predicted so: every slice IN is exact on P7 alone, within 1 on all but P1
    # (2 slices off at the apex); its boundary errors per stack: P1 1.5, P2..P6 1 (P5 unscored), P7 0
    t = range_case()
    t = pd.concat([t, pd.DataFrame({"patient": "P7", "frame": "ED", "slice": range(4), "truth": 1, "pred": 1})],
                  ignore_index=True)
    every_in = np.ones(len(t), dtype=int)
    d = paired_range_difference(t["truth"], t["pred"], every_in, t, n_boot=300, seed=0)
    assert d["range_exact"]["difference"] == pytest.approx(2 / 6 - 1 / 6)     # P2, P7 against P7
    assert d["range_within1"]["difference"] == pytest.approx(4 / 6 - 5 / 6)   # P1, P2, P4, P7 against all but P1
    # the model's boundary MAE leaves out P3 (no IN predicted): (0.5 + 0 + 1 + 1.5 + 0) / 5 against 5.5 / 6
    assert d["boundary_mae"]["difference"] == pytest.approx(0.6 - 5.5 / 6)
    assert (d["n_stacks"], d["n_stacks_outer"], d["n_patients"]) == (6, 5, 6)
    for key in ("range_exact", "range_within1", "boundary_mae"):
        assert d[key]["lo"] <= d[key]["difference"] <= d[key]["hi"]
    assert (d["n_boot"], d["seed"], d["alpha"]) == (300, 0, 0.05)


def test_a_model_right_where_the_constant_misses_k_of_n_stacks_gains_k_over_n():
    # 8 patients, one stack each; 3 stacks start with an OAP slice, which the model gets and every slice IN misses
    labels = [[0, 1, 1, 1]] * 3 + [[1, 1, 1, 1]] * 5
    t = stacks_of([f"p{i}" for i in range(8)], labels)
    d = paired_range_difference(t["truth"], t["truth"], np.ones(len(t), dtype=int), t, n_boot=500, seed=2)
    assert d["range_exact"]["difference"] == pytest.approx(3 / 8)
    assert 0 <= d["range_exact"]["lo"] < 3 / 8 < d["range_exact"]["hi"] <= 1  # never worse on any resample
    # one slice off is within 1: no difference on any resample
    assert (d["range_within1"]["difference"], d["range_within1"]["lo"], d["range_within1"]["hi"]) == (0, 0, 0)
    assert d["boundary_mae"]["difference"] == pytest.approx(-3 * 0.5 / 8)  # the constant's apical error 1 of 2 ends
    assert d["n_stacks_outer"] == 3
    everywhere = stacks_of([f"p{i}" for i in range(4)], [[0, 1, 1]] * 4)  # the constant wrong on every stack
    d = paired_range_difference(everywhere["truth"], everywhere["truth"], np.ones(12, dtype=int), everywhere,
                                n_boot=50)
    assert (d["range_exact"]["difference"], d["range_exact"]["lo"], d["range_exact"]["hi"]) == (1, 1, 1)


def test_paired_bootstrap_draws_a_patients_stacks_together_and_is_seeded():
    # 10 patients with an ED and an ES stack; the model beats the constant on both stacks of patients 0..3
    patients = [f"p{i}" for i in range(10) for _ in range(2)]
    labels = [[0, 1, 1] if i < 4 else [1, 1, 1] for i in range(10) for _ in range(2)]
    t = stacks_of(patients, labels, ["ED", "ES"] * 10)
    every_in = np.ones(len(t), dtype=int)
    d = paired_range_difference(t["truth"], t["truth"], every_in, t, n_boot=400, seed=3)
    per_stack_gain = np.repeat([1.0] * 4 + [0.0] * 6, 2)  # stacks in (patient, frame) order
    expected = bootstrap_ci(lambda idx: per_stack_gain[idx].mean(), np.repeat(patients[::2], 2), 400, 3)
    assert (d["range_exact"]["lo"], d["range_exact"]["hi"]) == pytest.approx(expected, abs=1e-12)
    assert d["range_exact"]["difference"] == pytest.approx(0.4) and d["n_patients"] == 10
    assert paired_range_difference(t["truth"], t["truth"], every_in, t, n_boot=400, seed=3) == d
    other = paired_range_difference(t["truth"], t["truth"], every_in, t, n_boot=30, seed=4)["range_exact"]
    assert (other["lo"], other["hi"]) == pytest.approx(
        bootstrap_ci(lambda idx: per_stack_gain[idx].mean(), np.repeat(patients[::2], 2), 30, 4), abs=1e-12)


def test_paired_difference_without_replicates_and_refusals():
    d = paired_difference([1.0, np.nan, 0.0], [0.0, 0.0, 0.0], ["a", "b", "c"], n_boot=0)
    assert d["difference"] == pytest.approx(0.5) and math.isnan(d["lo"]) and math.isnan(d["hi"])
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([1.0, 0.0], [1.0], ["a", "b"])
    no_in = stacks_of(["a"], [[0, 2]])
    with pytest.raises(ValueError, match="no stack with a true IN slice"):
        paired_range_difference(no_in["truth"], no_in["truth"], no_in["truth"], no_in)


def test_per_stack_range_flags_stacks_with_outer_slices():
    t = range_case()
    per = per_stack_range(t["truth"].to_numpy(), t["pred"].to_numpy(), t).set_index("patient")
    assert per["outer"].all()  # every stack of range_case has an OAP or OBS slice
    assert per.loc["P2", "range_exact"] == 1.0 and per.loc["P1", "boundary_mae"] == 0.5
    assert np.isnan(per.loc["P5", "range_exact"]) and np.isnan(per.loc["P3", "boundary_mae"])

"""Label-efficiency curves: nested, stratified, seeded patient subsets; refused fractions; the CLI end to end with one
feature pass for the whole curve; the report's table and figure."""
from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pandas as pd
import pytest

from benchmark.data import nested_subsets, patient_order, subset_size
from benchmark.errors import BenchmarkInputError
from data_prep.manifest import Stack, write_dataset

CLASSES = ("OAP", "IN", "OBS")
# 40 patients by class signature: IN only, OAP+IN, IN+OBS, all three (8 of 40 have an OBS slice)
SIGNATURES = [(1,)] * 20 + [(0, 1)] * 12 + [(1, 2)] * 4 + [(0, 1, 2)] * 4


def rows_of(signatures):
    """Two slices per class per patient: (patient per row, class per row, signature per patient)."""
    patients, y = [], []
    for i, sig in enumerate(signatures):
        for c in sig:
            patients += [f"p{i:02d}"] * 2
            y += [c] * 2
    return np.array(patients), np.array(y), {f"p{i:02d}": s for i, s in enumerate(signatures)}


def test_subsets_are_nested_and_sized():
    patients, y, _ = rows_of(SIGNATURES)
    fractions = [0.25, 0.5, 0.75, 1.0]
    for repeat in range(3):
        subsets = nested_subsets(patients, y, CLASSES, fractions, seed=0, repeat=repeat, min_patients=3)
        assert [len(s) for s in subsets] == [10, 20, 30, 40]
        for small, large in pairwise(subsets):
            assert set(small) < set(large)
        assert set(subsets[-1]) == set(patients)


def test_every_prefix_is_class_stratified():
    """Each signature's share of any prefix is within 2 patients of its share of the pool (random sampling of 20 of 40
    misses by more than 2 for the 20-patient stratum about a fifth of the time), and the 8 OBS patients are never
    all left out of a 25 % subset (random sampling: 8 % of the time)."""
    patients, y, signature = rows_of(SIGNATURES)
    size = {s: SIGNATURES.count(s) for s in set(SIGNATURES)}
    for seed in range(100):
        order = patient_order(patients, y, seed, 0)
        assert sorted(order) == sorted(signature)
        for k in range(1, len(order) + 1):
            taken = pd.Series([signature[p] for p in order[:k]]).value_counts()
            for s, n in size.items():
                assert abs(taken.get(s, 0) - k * n / len(order)) < 2, (seed, k, s)
        quarter = nested_subsets(patients, y, CLASSES, [0.25], seed, 0, min_patients=3)[0]
        assert any(2 in signature[p] for p in quarter), seed


def test_subsets_are_seeded_per_seed_and_repeat():
    patients, y, _ = rows_of(SIGNATURES)

    def half(seed, repeat):
        return nested_subsets(patients, y, CLASSES, [0.5], seed, repeat, min_patients=3)[0]
    np.testing.assert_array_equal(half(0, 1), half(0, 1))
    # the order of the rows does not matter, only which patient has which slices
    perm = np.random.default_rng(5).permutation(len(patients))
    np.testing.assert_array_equal(nested_subsets(patients[perm], y[perm], CLASSES, [0.5], 0, 1, 3)[0], half(0, 1))
    assert len({tuple(half(0, r)) for r in range(4)}) == 4
    assert tuple(half(1, 0)) != tuple(half(0, 0))


def test_fraction_is_immune_to_float_noise():
    assert subset_size(0.1, 70) == 7 and subset_size(0.1, 71) == 8 and subset_size(1.0, 54) == 54


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_fraction_outside_zero_one_is_refused(fraction):
    patients, y, _ = rows_of(SIGNATURES)
    with pytest.raises(BenchmarkInputError, match=r"--train-fraction must be in \(0, 1\]"):
        nested_subsets(patients, y, CLASSES, [0.5, fraction], 0, 0, min_patients=3)


def test_too_few_patients_for_the_folds_names_the_smallest_usable_fraction():
    patients, y, _ = rows_of(SIGNATURES)
    with pytest.raises(BenchmarkInputError, match=r"--train-fraction 0.05 keeps 2 of 40 training patients .*fewer "
                                                  r"patients than the 5 CV folds; the smallest usable fraction is "
                                                  r"0.125 \(5 patients\)"):
        nested_subsets(patients, y, CLASSES, [0.05, 1.0], 0, 0, min_patients=5)
    assert len(nested_subsets(patients, y, CLASSES, [0.125], 0, 0, min_patients=5)[0]) == 5


def test_a_subset_without_a_class_is_refused():
    """One patient of 40 has the only OBS slices: a fraction that does not reach it is refused, naming the class
    and the smallest fraction that does (which is then accepted)."""
    patients, y, _ = rows_of([(0, 1)] * 39 + [(0, 1, 2)])
    at = list(patient_order(patients, y, 0, 0)).index("p39") + 1
    assert at > 2, "the seed must put the OBS patient late for this test"
    smallest = np.ceil(at / 40 * 1000) / 1000
    with pytest.raises(BenchmarkInputError, match=rf"keeps 2 of 40 .*no patient with a OBS slice; the smallest "
                                                  rf"usable fraction is {smallest:g} \({at} patients\)"):
        nested_subsets(patients, y, CLASSES, [0.05], 0, 0, min_patients=2)
    assert "p39" in nested_subsets(patients, y, CLASSES, [smallest], 0, 0, min_patients=2)[0]
    with pytest.raises(BenchmarkInputError, match="no training patient has a OBS slice"):
        nested_subsets(patients[y != 2], y[y != 2], CLASSES, [1.0], 0, 0, min_patients=2)


# ---- the CLI end to end ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def balanced_data(tmp_path_factory):
    """10 patients, each with OAP, IN and OBS slices, so every fold of a 4-patient subset has every class."""
    rng = np.random.default_rng(0)
    labels = ["OAP", "IN", "IN", "IN", "OBS"]
    stacks = [Stack(f"p{i}", "ED", [rng.integers(0, 999, (16, 16)).astype(np.uint16) for _ in labels], labels,
                    [f"x{j}" for j in range(len(labels))]) for i in range(10)]
    return write_dataset(tmp_path_factory.mktemp("data") / "balanced", "test", stacks, source="test")


FAST = ["--backbone", "mobilenet", "--depth", "0", "--profile", "quick", "--epochs", "1", "--folds", "2",
        "--weights", "none", "--test-fraction", "0.2"]


@pytest.mark.slow
def test_cli_label_efficiency_end_to_end(balanced_data, tmp_path, capsys):
    from benchmark import report
    from benchmark.__main__ import main
    out = tmp_path / "out"
    assert main(["--data", str(balanced_data), "--out", str(out), *FAST, "--train-fraction", "1,0.5",
                 "--repeats", "2"]) == 0
    configs = {(f, r): json.loads((out / f"frac{f}" / f"rep{r}" / "mobilenet_d0" / "config.json").read_text())
               for f in ("0.5", "1") for r in (0, 1)}
    folds = {k: pd.read_csv(out / f"frac{k[0]}" / f"rep{k[1]}" / "folds.csv") for k in configs}
    test_patients = {k: set(df.patient[df.role == "test"]) for k, df in folds.items()}
    assert len({frozenset(t) for t in test_patients.values()}) == 1 and len(test_patients[("1", 0)]) == 2
    for (f, r), cfg in configs.items():
        d = cfg["data"]
        assert (d["train_fraction"], d["repeat"], d["subset_seed"]) == (float(f), r, [0, r])
        chosen = set(d["subset_patients"])
        assert len(chosen) == (4 if f == "0.5" else 8) and not chosen & test_patients[(f, r)]
        trained = folds[(f, r)]
        assert set(trained.patient[trained.role != "test"]) == chosen  # folds are made on the subset
        assert set(trained.role[trained.role != "test"]) == {"fold0", "fold1"}
    for r in (0, 1):
        assert set(configs[("0.5", r)]["data"]["subset_patients"]) < set(configs[("1", r)]["data"]["subset_patients"])
    assert configs[("0.5", 0)]["data"]["subset_patients"] != configs[("0.5", 1)]["data"]["subset_patients"]
    # one feature pass for the whole curve: every subset read the cache of the whole pool
    assert len([p for p in (out / "cache").iterdir() if p.is_dir()]) == 1
    every = pd.read_csv(out / "label_efficiency.csv")
    # each subset: the per-slice run, its stack model and the two baselines on the same test stacks
    assert set(every.run) == {"mobilenet_d0", "mobilenet_d0+stack", "baseline_every_in", "baseline_position"}
    assert (every.status[every.run.str.startswith("baseline_")] == "baseline").all()
    constant = every[every.run == "baseline_every_in"]
    assert constant.range_exact.nunique() == 1  # the same test stacks at every fraction
    le = every[every.run == "mobilenet_d0"]
    assert sorted(zip(le.fraction, le["repeat"])) == [(0.5, 0), (0.5, 1), (1.0, 0), (1.0, 1)]
    assert (le.status == "done").all()
    for row in le.itertuples():
        m = json.loads((out / f"frac{row.fraction:g}" / f"rep{row.repeat}" / "mobilenet_d0" /
                        "test_metrics.json").read_text())
        assert row.macro_f1 == pytest.approx(m["macro_f1"]) and row.n_patients == (4 if row.fraction == 0.5 else 8)
    everything = pd.read_csv(out / "label_efficiency_summary.csv")
    summary = everything[everything.run == "mobilenet_d0"]
    half = le[le.fraction == 0.5].macro_f1
    assert summary.loc[summary.fraction == 0.5, "macro_f1_mean"].item() == pytest.approx(half.mean())
    assert summary.loc[summary.fraction == 0.5, "macro_f1_sd"].item() == pytest.approx(half.std(ddof=1))

    capsys.readouterr()
    assert report.main([str(out), "--n-boot", "0"]) == 0
    assert "fig7_label_efficiency.png" in capsys.readouterr().out
    rep = out / "report"
    assert (rep / "fig7_label_efficiency.png").stat().st_size > 0 and (rep / "fig7_label_efficiency.pdf").is_file()
    table = pd.read_csv(rep / "table3_label_efficiency.csv")
    pd.testing.assert_series_equal(table.macro_f1_mean, everything.macro_f1_mean)
    assert "MobileNet α0.25 | 0 | 0.5 | 4 | 2 |" in (rep / "table3_label_efficiency.md").read_text()
    assert report.main([str(out), "--curve-metric", "nope"]) == 2
    assert "--curve-metric 'nope' is not a metric" in capsys.readouterr().err


@pytest.mark.parametrize("args, expected", [
    (["--train-fraction", "0.5,0"], "--train-fraction must be in (0, 1], got 0"),
    (["--train-fraction", "0.1"], ("--train-fraction 0.1 keeps 1 of 8 training patients (repeat 0): fewer patients "
                                   "than the 2 CV folds; the smallest usable fraction is 0.25 (2 patients)")),
    (["--repeats", "2"], "--repeats must be >= 1, and more than 1 only with --train-fraction"),
])
def test_cli_refuses_bad_fractions_with_one_message(balanced_data, tmp_path, capsys, args, expected):
    from benchmark.__main__ import main
    assert main(["--data", str(balanced_data), "--out", str(tmp_path / "out"), *FAST, *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("error:") == 1
    assert not list((tmp_path / "out").rglob("config.json"))

"""The metric columns of the report's tables: which metrics, under which decoding, their headings and which value is
best; and how a cell is printed."""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from ..metrics import higher_is_better
from ..summary import OF_CONSTANT, OOF, OOF_PAIRED, TEST_PAIRED, VS, to_markdown

# (key, heading)
CLASS_METRICS = [("macro_f1", "macro F1"), ("auc_micro", "micro AUC"), ("auc_weighted", "weighted AUC"),
                 ("accuracy", "accuracy"), ("soft_accuracy", "soft accuracy")]
RANGE_METRICS = [("range_exact", "range exact"), ("range_within1", "range ±1"), ("boundary_mae", "boundary MAE")]
REGRESSION_METRICS = [("mae", "MAE"), ("rmse", "RMSE"), ("r2", "R²"), ("mae_mean_baseline", "baseline MAE")]
NOT_RANKED = {"mae_mean_baseline"}  # the same reference for every run, not a result of one
NO_AUC_PREFIX = "mono_"  # monotone decoding changes labels, not probabilities: its AUCs are the argmax ones
DECODED_PREFIX = "dec_"  # the decoding chosen on validation: the run's headline IN-range figures
# key prefix -> the test_metrics.json section it reads ("" the top level, the argmax)
SECTIONS = {"": "", NO_AUC_PREFIX: "monotone", DECODED_PREFIX: "decoded"}
DECODED_METRICS = ["macro_f1"] + [k for k, _ in RANGE_METRICS]
BASELINE_DEPTH = "baseline"
# headings of the supports of the paired comparison with every slice IN (summary.TEST_PAIRED, OOF_PAIRED)
COUNTS = {"n_stacks": "n stacks", "n_stacks_outer": "n with outer slices"}


def paired_parts(key: str) -> tuple[bool, str, str]:
    """(out of fold, what: "" the predictor's own figure, VS its difference from every slice IN's, OF_CONSTANT every
    slice IN's, metric) of a column of TEST_PAIRED or OOF_PAIRED."""
    rest = key.removeprefix(OOF)
    for what in (VS, OF_CONSTANT):
        if rest.startswith(what):
            return key.startswith(OOF), what, rest[len(what):]
    return key.startswith(OOF), "", rest


def is_paired(key: str) -> bool:
    return key in TEST_PAIRED or key in OOF_PAIRED


def ranked(key: str) -> bool:
    """Whether a column's best value is marked: not a reference or a count; of the paired columns the predictors'
    own out-of-fold figures alone (a difference ranks as its figure does)."""
    if is_paired(key):
        _, what, base = paired_parts(key)
        return key.startswith(OOF) and not what and base not in COUNTS
    return key not in NOT_RANKED


def metric_keys(classes: Sequence[str], task: str = "classification") -> list[str]:
    """Table-2 metric columns: per-class F1, the class metrics, range metrics, then the same under monotone decoding
    (a classifier's); then the regression metrics (a regression's)."""
    base = [f"f1_{c.lower()}" for c in classes] + [k for k, _ in CLASS_METRICS] + [k for k, _ in RANGE_METRICS]
    mono = [NO_AUC_PREFIX + k for k in base if not k.startswith("auc_")]
    decoded = [DECODED_PREFIX + k for k in DECODED_METRICS]
    target = [k for k, _ in REGRESSION_METRICS] if task != "classification" else []
    return (base + mono + decoded if task != "regression" else []) + target


def split_key(key: str) -> tuple[str, str]:
    """(prefix, metric) of a table-2 key: "dec_range_exact" -> ("dec_", "range_exact")."""
    for prefix in (NO_AUC_PREFIX, DECODED_PREFIX):
        if key.startswith(prefix):
            return prefix, key[len(prefix):]
    return "", key


def heading(key: str) -> str:
    if is_paired(key):
        oof, what, base = paired_parts(key)
        name = COUNTS.get(base) or dict(RANGE_METRICS)[base]
        name = {"": name, VS: f"Δ {name} vs every IN", OF_CONSTANT: f"{name}, every IN"}[what]
        return f"OOF {name}" if oof else name
    prefix, base = split_key(key)
    names = dict(CLASS_METRICS + RANGE_METRICS + REGRESSION_METRICS)
    name = f"F1 {base[3:].upper()}" if base.startswith("f1_") else names.get(base, base.replace("_", " "))
    return name + {"": "", NO_AUC_PREFIX: " (mono)", DECODED_PREFIX: ""}[prefix]


def best_mask(df: pd.DataFrame, key: str, decimals: int = 3) -> pd.Series:
    """Rows holding the best value of a column at the printed precision (ties all marked); none with < 2 values."""
    values = df[key].astype(float).round(decimals)
    if values.notna().sum() < 2 or not ranked(key):
        return pd.Series(False, index=df.index)
    best = values.max() if higher_is_better(paired_parts(key)[2] if is_paired(key) else split_key(key)[1]) \
        else values.min()
    return values == best


def num(v, decimals: int) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{decimals}f}"


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    """A Markdown table of cells already printed as text."""
    return to_markdown(pd.DataFrame(rows, columns=head))

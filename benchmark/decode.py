"""Monotone decoding of per-slice probabilities into one contiguous IN range per stack.

A short-axis stack ordered apex -> base is labelled OAP* IN* OBS*: the slices beyond the apex, then the slices
with LV cavity, then the slices beyond the base. A per-slice classifier can break that order (an isolated OBS
between two IN slices); `monotone_decode` returns the most probable labelling that respects it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

OAP, IN, OBS = 0, 1, 2
STACK_KEYS = ("patient", "frame", "slice")
PROBA_FLOOR = 1e-12  # log(0) would make every labelling through a zero-probability slice equally impossible


def stack_table(stacks, n: int) -> pd.DataFrame:
    """The (patient, frame, slice) of each of n samples as a DataFrame with a fresh 0..n-1 index.

    stacks: a DataFrame with columns patient, frame, slice (other columns ignored, e.g. a manifest), or a
    sequence of three equally long arrays (patient, frame, slice).
    """
    if isinstance(stacks, pd.DataFrame):
        missing = [c for c in STACK_KEYS if c not in stacks.columns]
        if missing:
            raise ValueError(f"stacks: missing column(s) {missing}; need {list(STACK_KEYS)}")
        table = stacks[list(STACK_KEYS)].reset_index(drop=True)
    else:
        if len(stacks) != 3:
            raise ValueError(f"stacks: expected a DataFrame or 3 arrays (patient, frame, slice), got {len(stacks)}")
        table = pd.DataFrame({k: np.asarray(v) for k, v in zip(STACK_KEYS, stacks)})
    if len(table) != n:
        raise ValueError(f"stacks: {len(table)} rows for {n} samples")
    if not pd.api.types.is_integer_dtype(table["slice"]):
        raise ValueError(f"stacks: slice must be integer, got dtype {table['slice'].dtype}")
    dup = table.duplicated(list(STACK_KEYS))
    if dup.any():
        first = table[dup].iloc[0]
        raise ValueError(f"stacks: patient {first.patient} frame {first.frame} slice {first.slice} occurs "
                         f"more than once ({int(dup.sum())} duplicate rows)")
    return table


def stack_groups(table: pd.DataFrame) -> list[np.ndarray]:
    """Row positions of each (patient, frame) stack, ordered by slice (apex -> base)."""
    slices = table["slice"].to_numpy()
    groups = table.groupby(["patient", "frame"], sort=True, dropna=False).indices.values()
    return [rows[np.argsort(slices[rows], kind="stable")] for rows in groups]


def monotone_decode(proba) -> np.ndarray:
    """Most probable labelling OAP^i IN^(j-i) OBS^(n-j) (0 <= i <= j <= n) of one stack ordered apex -> base.

    proba: (n, 3) class probabilities (OAP, IN, OBS). Maximises the sum of log-probabilities, probabilities
    clipped at 1e-12; any run may be empty (all IN, all OAP, no IN at all...). Exact and O(n): with
    A[i] = sum_{k<i} (log p_OAP - log p_IN) and B[j] = sum_{k<j} (log p_IN - log p_OBS), the score of (i, j) is
    A[i] + B[j] + sum_k log p_OBS, so the best j for a given i is an argmax of the suffix B[i..n].

    Ties go to the lexicographically smallest label sequence: the longest OAP run, then the longest IN run.
    That is np.argmax's lowest-class-first rule, so when the per-slice argmax is already monotone the result
    equals it, ties included. Scores within 1e-9 * (1 + sum |log p|) of the best count as tied, because
    summing the same numbers in another order already moves the last bits.
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"monotone_decode: expected (n, 3) probabilities (OAP, IN, OBS), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("monotone_decode: probabilities contain NaN or inf")
    n = len(p)
    logp = np.log(np.clip(p, PROBA_FLOOR, 1.0))
    a = np.concatenate([[0.0], np.cumsum(logp[:, OAP] - logp[:, IN])])
    b = np.concatenate([[0.0], np.cumsum(logp[:, IN] - logp[:, OBS])])
    best_b_from = np.maximum.accumulate(b[::-1])[::-1]
    best_for_i = a + best_b_from
    floor = best_for_i.max() - 1e-9 * (1.0 + np.abs(logp).sum())
    i = int(np.flatnonzero(best_for_i >= floor)[-1])
    j = i + int(np.flatnonzero(a[i] + b[i:] >= floor)[-1])
    labels = np.full(n, OBS, dtype=np.int64)
    labels[:i] = OAP
    labels[i:j] = IN
    return labels


def decode_stacks(proba, stacks) -> np.ndarray:
    """`monotone_decode` applied to each (patient, frame) stack ordered by slice; labels in the input row order.

    stacks: see `stack_table`. A stack missing some slices is decoded over the slices present, in slice order.
    """
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"decode_stacks: expected (n, 3) probabilities (OAP, IN, OBS), got shape {p.shape}")
    return per_stack(p, stack_groups(stack_table(stacks, len(p))), monotone_decode)


def per_stack(proba: np.ndarray, groups: list[np.ndarray], decode) -> np.ndarray:
    """Labels in row order from `decode` (one stack's probabilities -> its labels) applied to each stack's rows."""
    labels = np.empty(len(proba), dtype=np.int64)
    for rows in groups:
        labels[rows] = decode(proba[rows])
    return labels


def in_range(labels: Sequence[int], in_index: int = IN) -> tuple[int, int] | None:
    """(first, last) position of an IN label in a stack's labels ordered apex -> base, or None without IN.

    For a non-monotone labelling this is the span from the first to the last IN, gaps included.
    """
    hits = np.flatnonzero(np.asarray(labels) == in_index)
    if hits.size == 0:
        return None
    return int(hits[0]), int(hits[-1])


@dataclass(frozen=True)
class Decoding:
    """How probabilities become labels: per-class offsets added to the log-probabilities, then the per-slice
    argmax or the monotone OAP* IN* OBS* decoding of each stack. The offsets shift how readily an outer class is
    called; they are chosen on validation folds (`tune_decoding`), never on the test set."""

    kind: str = "monotone"                       # monotone | argmax
    offsets: tuple[float, ...] = (0.0, 0.0, 0.0)  # added to log p (OAP, IN, OBS)

    def __post_init__(self) -> None:
        if self.kind not in DECODERS:
            raise ValueError(f"decoding kind {self.kind!r}; valid: {', '.join(DECODERS)}")

    def shifted(self, proba) -> np.ndarray:
        """The probabilities after the offsets (renormalised)."""
        logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), PROBA_FLOOR, 1.0)) + np.asarray(self.offsets)
        p = np.exp(logp - logp.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    def decode_stack(self, proba) -> np.ndarray:
        """Labels of one stack ordered apex -> base."""
        p = self.shifted(proba)
        return monotone_decode(p) if self.kind == "monotone" else p.argmax(axis=1)

    def apply(self, proba, stacks) -> np.ndarray:
        """Labels of every row (see `decode_stacks` for `stacks`), in the input row order."""
        p = np.asarray(proba, dtype=np.float64)
        return per_stack(p, stack_groups(stack_table(stacks, len(p))), self.decode_stack)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "offsets": [float(v) for v in self.offsets]}

    @classmethod
    def from_dict(cls, d: dict) -> Decoding:
        return cls(str(d["kind"]), tuple(float(v) for v in d["offsets"]))


DECODERS = ("monotone", "argmax")
# log-probability offsets tried for OAP and OBS: from "call outer slices far more readily" to "far less"
OFFSET_GRID = (-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0)


def stack_range_hits(y, pred, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per stack with a true IN slice: (exact IN range, both ends within 1 slice), positions counted within the
    stack. The fast core of `tune_decoding`; metrics.range_metrics is the reference it agrees with (a test)."""
    exact, within = [], []
    for rows in groups:
        true = in_range(y[rows])
        if true is None:
            continue
        got = in_range(pred[rows])
        if got is None:
            exact.append(False)
            within.append(False)
            continue
        err = max(abs(got[0] - true[0]), abs(got[1] - true[1]))
        exact.append(err == 0)
        within.append(err <= 1)
    return np.array(exact, dtype=bool), np.array(within, dtype=bool)


def tune_decoding(proba, y, stacks, grid: Sequence[float] = OFFSET_GRID) -> tuple[Decoding, dict]:
    """The decoding with the highest exact-IN-range rate on these (validation) predictions.

    Every kind x OAP offset x OBS offset of the grid is scored; ties go to the higher within-1 rate, then the
    smaller total |offset|, then monotone before argmax (the order of DECODERS), so with no evidence either way the
    plain monotone decoding stays. Returns the choice and a record of it for selection.json.
    """
    p = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y)
    groups = stack_groups(stack_table(stacks, len(p)))
    best_key, best, plain = None, None, None
    for k, kind in enumerate(DECODERS):
        for a in grid:
            for b in grid:
                d = Decoding(kind, (float(a), 0.0, float(b)))
                exact, within = stack_range_hits(y, per_stack(p, groups, d.decode_stack), groups)
                if not exact.size:
                    raise ValueError("tune_decoding: no stack with a true IN slice to tune on")
                scores = (float(exact.mean()), float(within.mean()))
                key = (scores[0], scores[1], -(abs(a) + abs(b)), -k)
                if d == Decoding():
                    plain = scores
                if best_key is None or key > best_key:
                    best_key, best = key, (d, scores)
    decoding, (exact_rate, within_rate) = best
    return decoding, {**decoding.to_dict(), "tuned_on": "out-of-fold validation predictions",
                      "n_stacks": int(exact.size),  # the stacks with a true IN slice, the same for every decoding
                      "val_range_exact": exact_rate, "val_range_within1": within_rate,
                      "val_range_exact_plain_monotone": plain[0] if plain else float("nan")}

"""Pieces of the training loop: prefetched batch making and compiled inference."""
from __future__ import annotations

import threading

import keras
import numpy as np
import pytest

from benchmark.data import prefetched
from benchmark.infer import inference, predict


def test_prefetched_keeps_order_and_makes_the_next_batch_in_another_thread():
    threads = []

    def make(sl):
        threads.append(threading.get_ident())
        return sl.start

    got = list(prefetched(9, 2, make))
    assert got == [(slice(i, i + 2), i) for i in (0, 2, 4, 6, 8)]
    assert set(threads) and threading.get_ident() not in threads
    assert list(prefetched(0, 2, make)) == []


def test_prefetched_makes_several_batches_at_once_and_yields_them_in_order():
    barrier = threading.Barrier(3, timeout=10)  # breaks unless the first three batches are made concurrently

    def make(sl):
        if sl.start < 3:
            barrier.wait()
        return list(range(sl.start, min(sl.stop, 10)))

    got = list(prefetched(10, 1, make, workers=3))
    assert [x for _, x in got] == [[i] for i in range(10)]
    assert [sl.start for sl, _ in got] == list(range(10))


def test_prefetched_raises_the_makers_error_in_order():
    def make(sl):
        if sl.start == 1:
            raise ValueError("bad image")
        return sl.start

    seen = []
    with pytest.raises(ValueError, match="bad image"):
        for _, x in prefetched(3, 1, make):
            seen.append(x)
    assert seen == [0]


def test_inference_is_traced_once_for_every_batch_size_and_equals_the_model():
    inp = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(5, 3, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
    data = np.random.default_rng(0).normal(size=(70, 4, 4, 3)).astype("float32")
    out = predict(model, [data], batch_size=32)  # batches of 32, 32 and 6
    np.testing.assert_allclose(out, np.asarray(model(data, training=False)), atol=1e-5)
    fn = inference(model).compiled
    assert fn is inference(model).compiled
    assert fn.experimental_get_tracing_count() == 1
    assert predict(model, [data[:0]]).shape == (0, 2)


def test_view_index_finds_every_view_and_names_a_missing_one():
    from benchmark.cache import ViewIndex, Views
    rows = np.repeat(np.arange(50), 6)
    copies = np.tile([-1, 0, 0, 1, 1, 2], 50)
    draws = np.tile([0, 0, 1, 0, 1, 0], 50)
    order = np.random.default_rng(0).permutation(len(rows))
    index = ViewIndex(Views(rows[order], copies[order], draws[order]))
    q = np.random.default_rng(1).integers(0, len(rows), 500)
    np.testing.assert_array_equal(index(rows[order][q], copies[order][q], draws[order][q]), q)
    with pytest.raises(KeyError, match=r"row 7, copy 2, draw 1"):
        index(np.array([3, 7]), np.array([0, 2]), np.array([1, 1]))

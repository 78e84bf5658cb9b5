"""put_tensors into a Python on_push handler."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import tensorwire as tw
from conftest import every_dtype


def test_handler_gets_every_tensor_once_on_a_worker_thread():
    tensors = every_dtype()
    tensors["big"] = np.arange(3 << 20, dtype=np.float32)  # several chunks
    seen, threads, names = {}, set(), []

    def on_push(name, items):
        names.append(name)
        threads.add(threading.get_ident())
        for n, arr in items:
            assert n not in seen, f"{n} twice"
            seen[n] = arr.copy()

    with tw.Server(on_push=on_push) as srv:
        summary = tw.Client(srv.url).put_tensors("updates/site-1", tensors)
    assert names == ["updates/site-1"]
    assert threading.get_ident() not in threads
    assert list(seen) == list(tensors)
    for n, want in tensors.items():
        assert seen[n].dtype == want.dtype and seen[n].shape == want.shape, n
        np.testing.assert_array_equal(seen[n], want, err_msg=n)
    assert summary["items"] == len(tensors)
    assert summary["bytes"] == sum(a.nbytes for a in tensors.values())


def test_tensors_are_taken_from_the_mapping_one_at_a_time():
    taken = []

    class Lazy(dict):
        def items(self):
            for k in super().keys():
                taken.append(k)
                yield k, np.full(1 << 20, len(taken), np.float32)

    received = []

    def on_push(name, items):
        for n, arr in items:
            # The sender takes a tensor from the mapping only when the one
            # before has been handed to HTTP/2: it runs ahead of the handler
            # by what flow control lets through (8 MiB windows, 4 MiB tensors
            # here), not by the whole mapping.
            received.append((n, len(taken)))

    with tw.Server(on_push=on_push) as srv:
        tw.Client(srv.url).put_tensors("lazy", Lazy({f"t{i}": None for i in range(16)}))
    assert [n for n, _ in received] == [f"t{i}" for i in range(16)]
    assert all(count <= i + 5 for i, (_, count) in enumerate(received)), received


def test_handler_may_stop_early_and_the_push_is_still_verified():
    got = []

    def on_push(name, items):
        for n, _ in items:
            got.append(n)
            break

    with tw.Server(on_push=on_push) as srv:
        summary = tw.Client(srv.url).put_tensors("u", {"a": np.zeros(10), "b": np.ones(10)})
    assert got == ["a"] and summary["items"] == 2


def test_handler_exception_fails_the_push():
    def on_push(name, items):
        raise RuntimeError("refused by the controller")

    with tw.Server(on_push=on_push) as srv:
        with pytest.raises(tw.TransferError) as e:
            tw.Client(srv.url).put_tensors("u", {"a": np.zeros(10)})
    assert e.value.status == 500
    assert "refused by the controller" in str(e.value)


def test_quantized_push_is_restored_to_the_original_dtype():
    x = np.linspace(-2, 2, 1000, dtype=np.float32).reshape(10, 100)
    got = {}

    def on_push(name, items):
        got.update((n, a.copy()) for n, a in items)

    with tw.Server(on_push=on_push) as srv:
        tw.Client(srv.url).put_tensors("u", {"x": x, "i": np.arange(4)}, quantize="nf4")
    assert got["x"].dtype == np.float32 and got["x"].shape == x.shape
    np.testing.assert_array_equal(got["x"], tw.dequantize(tw.quantize(x, "nf4")))
    np.testing.assert_array_equal(got["i"], np.arange(4))


def test_bad_input_raises_before_anything_is_stored():
    with tw.Server(on_push=lambda name, items: list(items)) as srv:
        with pytest.raises(TypeError):
            tw.Client(srv.url).put_tensors("u", {"s": np.array(["text"])})
        with pytest.raises(ValueError):
            tw.Client(srv.url).put_tensors("u", {"a": np.zeros(3)}, quantize="int3")

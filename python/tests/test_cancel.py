"""Cancellation: abandoned iterators and Ctrl-C."""

from __future__ import annotations

import gc
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import tensorwire as tw
from conftest import wait_until, write_safetensors

TENSOR = 4 << 20
COUNT = 48


@pytest.fixture
def big_container():
    return {f"t{i:02}": np.full(TENSOR // 4, i, np.float32) for i in range(COUNT)}


@pytest.mark.parametrize("how", ["close", "drop", "break"])
def test_abandoned_iterator_cancels_on_the_server(big_container, how):
    total = TENSOR * COUNT
    with tw.Server(containers={"m": big_container}) as srv:
        c = tw.Client(srv.url)
        it = c.retrieve("m")
        if how == "break":
            for name, arr in it:
                break
            del it
        else:
            next(it)
            if how == "close":
                it.close()
            else:
                del it
                gc.collect()
        assert wait_until(lambda: srv.active_requests == 0), "the server is still sending"
        sent = srv.bytes_sent
        time.sleep(0.2)
        assert srv.bytes_sent == sent, "bytes still flowing after the cancel"
        assert sent < total / 2, f"{sent} of {total} bytes sent"
        # The connection is still good for the next transfer.
        assert [n for n, _ in c.retrieve("m", items=["t01"])] == ["t01"]


CHILD = textwrap.dedent(
    """
    import sys, tensorwire as tw
    c = tw.Client(sys.argv[1])
    if sys.argv[2] == "get_file":
        c.get_file("big.safetensors", sys.argv[3])
    else:
        for name, arr in c.retrieve("big.safetensors"):
            pass
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize("call", ["get_file", "retrieve"])
def test_ctrl_c_cancels_on_both_sides(proxy, server_root, tmp_path, call):
    write_safetensors(server_root / "big.safetensors", {f"t{i}": np.ones(1 << 20, np.float32) for i in range(16)})
    dest = tmp_path / "big.safetensors"
    dest.write_bytes(b"previous version")
    # The proxy closes first on the way out: a failure here must not leave
    # the server waiting on a stalled stream.
    with tw.Server(root=server_root) as srv, proxy(srv.address, rate=4 << 20) as slow:  # 64 MiB: 16 s
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, slow.url, call, str(dest)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_until(lambda: slow.forwarded > 1 << 20, timeout=60), "the transfer did not start"
            assert srv.active_requests == 1
            started = time.monotonic()
            child.send_signal(signal.SIGINT)
            out, err = child.communicate(timeout=60)
        finally:
            child.kill()
            child.wait()
        # 50 ms signal polling; generous for a loaded 2-core machine
        assert time.monotonic() - started < 15, "Ctrl-C took too long"
        assert child.returncode != 0 and "KeyboardInterrupt" in err, err
        assert "finished" not in out
        # The server stops at once when the reset reaches it; when the child
        # dies before its reset is written, the server notices the vanished
        # peer by its keep-alive PINGs (Config.keepalive_interval + timeout,
        # 20 s + 20 s), which bounds how long it keeps sending.
        assert wait_until(lambda: srv.active_requests == 0, timeout=60), "the server kept sending"
    assert dest.read_bytes() == b"previous version"
    assert not (tmp_path / "big.safetensors.part").exists()


def test_gil_is_released_while_a_transfer_waits(proxy):
    import threading

    with tw.Server(containers={"m": {"w": np.zeros(2 << 20, np.float32)}}) as srv, proxy(
        srv.address, rate=8 << 20  # about a second for 8 MiB
    ) as slow:
        done = threading.Event()
        t = threading.Thread(target=lambda: (list(tw.Client(slow.url).retrieve("m")), done.set()))
        t.start()
        ticks = 0
        while not done.is_set() and ticks < 10_000_000:
            ticks += 1  # pure Python: runs only while the transfer has let go of the GIL
        t.join(30)
        assert done.is_set()
        assert ticks > 100_000, f"the main thread ran {ticks} loop iterations during the transfer"


def test_close_lets_transfers_in_flight_finish(proxy):
    import threading

    want = np.arange(2 << 20, dtype=np.float32)
    srv = tw.Server(containers={"m": {"w": want}})
    slow = proxy(srv.address, rate=8 << 20)
    got, errors = {}, []

    def pull():
        try:
            got.update(tw.Client(slow.url).retrieve("m"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=pull)
    t.start()
    assert wait_until(lambda: slow.forwarded > 1 << 20)
    srv.close()  # returns once the transfer in flight has finished
    assert srv.active_requests == 0
    t.join(30)
    assert not errors, errors
    np.testing.assert_array_equal(got["w"], want)
    with pytest.raises(tw.ConnectionError):
        tw.Client(f"http://{srv.address}")

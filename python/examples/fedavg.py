"""A FedAvg round trip in Python: one controller, N client processes.

The controller serves the global model from memory and averages the
clients' pushed weights item by item in its ``on_push`` handler, in place:
its memory is one model plus the tensor each client has in flight. Each
client retrieves the global model lazily (one tensor at a time), "trains"
(a fixed, checkable update), and pushes its weights with ``put_tensors``.

    python examples/fedavg.py --clients 3 --rounds 2 --mib 256

A round: the controller opens it, every client retrieves the model and
reports; once all have (a barrier: no one may read the model while it is
being averaged in place — a sender would see it change under a chunk, which
the receiver reports as an IntegrityError), they push, and the controller folds each tensor into the global model as it
arrives: ``global = sum(w_i) / N``. At the end it checks the result against
the closed form and prints its peak RSS.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import subprocess
import sys
import threading
import time

import numpy as np

import tensorwire as tw


def synthetic_model(mib: int):
    """Float32 tensors of a few shapes adding up to about ``mib`` MiB."""
    rng = np.random.default_rng(0)
    model, total, i = {}, 0, 0
    sizes = [4 << 20, 1 << 20, 16 << 10, 8 << 20]  # elements
    while total < mib << 20:
        n = sizes[i % len(sizes)]
        model[f"layer{i:03}.weight"] = rng.standard_normal(n, dtype=np.float32)
        total += 4 * n
        i += 1
    return model


def local_update(arr: np.ndarray, site: int) -> np.ndarray:
    """The client's "training": w = 0.5 * g + 0.01 * (site + 1)."""
    return arr * np.float32(0.5) + np.float32(0.01 * (site + 1))


def client_main(site: int, url: str, rounds: int) -> None:
    c = tw.Client(url)
    for r in range(rounds):
        # Wait for the round to open: the controller is done averaging the
        # last one (it rewrites the global model in place while it averages).
        if sys.stdin.readline().strip() != "pull":
            return
        update = {name: local_update(arr, site) for name, arr in c.retrieve("global")}
        print("retrieved", flush=True)
        if sys.stdin.readline().strip() != "go":
            return
        c.put_tensors(f"updates/site-{site}/round-{r}", update, quantize=None)
        del update
        print("pushed", flush=True)
    c.close()


class Averager:
    """Folds pushed tensors into the global model, in place."""

    def __init__(self, model, clients: int) -> None:
        self.model, self.clients = model, clients
        self.contributions = {name: 0 for name in model}
        self.lock = threading.Lock()
        self.pushes = 0

    def on_push(self, name: str, tensors) -> None:
        for tensor, arr in tensors:
            g = self.model[tensor]
            with self.lock:
                seen = self.contributions[tensor] % self.clients
                # No temporaries: the sum is built in the global tensor itself.
                if seen == 0:
                    np.copyto(g, arr)  # first update of the round overwrites
                else:
                    g += arr
                if seen == self.clients - 1:
                    g *= np.float32(1 / self.clients)
                self.contributions[tensor] += 1
            del arr  # the received buffer is freed here
        with self.lock:
            self.pushes += 1


def peak_rss_mib() -> float:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss would
    include the parent's RSS at fork), ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def tune_malloc() -> bool:
    """Keeps tensor-sized buffers out of glibc's arenas.

    glibc raises its mmap threshold (up to 32 MiB) after the first large
    buffer is freed; from then on received tensors come from per-thread
    arenas, and freed ones stay resident there. Fixing the threshold at 8 MiB
    keeps every tensor buffer mmapped and returned when freed (h2's 1 MiB
    frame buffers still come from the arenas). Not needed elsewhere than glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_MMAP_THRESHOLD = -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 8 << 20))


def controller_main(args) -> int:
    tuned = tune_malloc() if not args.no_malloc_tuning else False
    model = synthetic_model(args.mib)
    probe = {k: float(v.mean(dtype=np.float64)) for k, v in list(model.items())[:2]}
    avg = Averager(model, args.clients)
    started = time.monotonic()
    with tw.Server("127.0.0.1:0", containers={"global": model}, on_push=avg.on_push) as srv:
        procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--client", str(i), "--url", srv.url, "--rounds", str(args.rounds)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(args.clients)
        ]
        try:
            for r in range(args.rounds):
                for p in procs:
                    p.stdin.write("pull\n")
                    p.stdin.flush()
                for p in procs:
                    if p.stdout.readline().strip() != "retrieved":
                        raise SystemExit(f"client {p.args[3]} failed in round {r}")
                for p in procs:
                    p.stdin.write("go\n")
                    p.stdin.flush()
                for p in procs:
                    if p.stdout.readline().strip() != "pushed":
                        raise SystemExit(f"client {p.args[3]} failed to push in round {r}")
                # Pushes are answered after on_push returned: the round is averaged.
                print(f"round {r + 1}: {args.clients} updates averaged")
        finally:
            for p in procs:
                p.stdin.close()
                p.wait(timeout=60)
    elapsed = time.monotonic() - started
    # Closed form: g <- 0.5 g + mean(0.01 (i + 1)) each round.
    shift = 0.01 * (args.clients + 1) / 2
    for name, mean in probe.items():
        want = mean
        for _ in range(args.rounds):
            want = 0.5 * want + shift
        got = float(model[name].mean(dtype=np.float64))
        assert abs(got - want) < 1e-4, (name, got, want)
    peak = peak_rss_mib()
    model_mib = sum(a.nbytes for a in model.values()) / 2**20
    largest = max(a.nbytes for a in model.values()) / 2**20
    print(f"ok: {args.rounds} rounds x {args.clients} clients in {elapsed:.1f} s; averages match the closed form")
    print(
        f"controller peak RSS {peak:.0f} MiB (model {model_mib:.0f} MiB, largest tensor {largest:.0f} MiB, "
        f"{args.clients} clients; glibc mmap threshold {'fixed at 8 MiB' if tuned else 'left alone'})"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--mib", type=int, default=256, help="model size")
    ap.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's mmap threshold alone")
    ap.add_argument("--client", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client is not None:
        client_main(args.client, args.url, args.rounds)
        return 0
    return controller_main(args)


if __name__ == "__main__":
    sys.exit(main())

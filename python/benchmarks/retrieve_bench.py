"""Client.retrieve into numpy against `tensorwire get --mode container`, and
the Python process's peak memory while retrieving a model lazily.

    python benchmarks/retrieve_bench.py --gib 1 --runs 5     # needs target/release/tensorwire

A safetensors model (float32 tensors of --tensor-mib each, --gib in all) is
written to --dir (tmpfs by default) and served by `tensorwire serve` in its
own process. Then, alternating, each run:

* rust:   `tensorwire get URL -o OUT --mode container` (tensors written into a
          safetensors file as they arrive), timed around the process;
* python: a fresh interpreter iterating `Client.retrieve` and dropping each
          array, timed around the process (interpreter start and imports
          included) and inside it (from `Client()` to the last tensor); it
          also reports its peak RSS (VmHWM).

Prints the medians side by side, the throughput ratio python/rust, and
whether the Python peak stayed within the largest tensor + 64 MiB (with
--check, the exit status is 1 if it did not).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, sys, time
import tensorwire as tw
def peak_mib():
    # VmHWM: this process's own peak. (ru_maxrss is no good here: Linux
    # carries the parent's RSS at fork over into the child's ru_maxrss.)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.perf_counter()
c = tw.Client(sys.argv[1])
n = total = 0
for name, arr in c.retrieve("model.safetensors"):
    n += 1
    total += arr.nbytes
    del arr
t1 = time.perf_counter()
print(json.dumps({"seconds": t1 - t0, "tensors": n, "bytes": total,
                  "peak_mib": peak_mib(),
                  "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}))
"""


def write_model(path: Path, gib: float, tensor_mib: int) -> int:
    """A safetensors file of float32 tensors, written tensor by tensor."""
    count = max(1, round(gib * 1024 / tensor_mib))
    n = tensor_mib << 18  # float32 elements
    header, at = {}, 0
    for i in range(count):
        header[f"layer{i:03}.weight"] = {"dtype": "F32", "shape": [n], "data_offsets": [at, at + 4 * n]}
        at += 4 * n
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for _ in range(count):
            f.write(rng.standard_normal(n, dtype=np.float32).tobytes())
    return count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_timed(cmd, env=None):
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - started, out.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--tensor-mib", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    default_dir = "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"
    ap.add_argument("--dir", default=default_dir)
    ap.add_argument("--check", action="store_true", help="exit 1 when the peak exceeds the bound")
    ap.add_argument("--bin", default=os.environ.get("TENSORWIRE_BIN", str(REPO / "target/release/tensorwire")))
    args = ap.parse_args()
    if not Path(args.bin).is_file():
        print(f"SKIPPED: no tensorwire binary at {args.bin} (cargo build --release --bin tensorwire)")
        return 0

    work = Path(args.dir) / f"tensorwire-retrieve-bench-{os.getpid()}"
    (work / "root").mkdir(parents=True)
    server = None
    try:
        count = write_model(work / "root/model.safetensors", args.gib, args.tensor_mib)
        size = (work / "root/model.safetensors").stat().st_size
        addr = f"127.0.0.1:{free_port()}"
        server = subprocess.Popen([args.bin, "serve", "--root", str(work / "root"), "--addr", addr],
                                  stderr=subprocess.PIPE, text=True)
        server.stderr.readline()  # "serving ... on ..." once bound
        url = f"http://{addr}"
        out = work / "out.safetensors"
        rust, python, inner, peaks, faults = [], [], [], [], []
        for _ in range(args.runs):
            t, _ = run_timed([args.bin, "get", f"{url}/objects/model.safetensors", "-o", str(out), "--mode", "container"])
            rust.append(t)
            out.unlink()
            t, report = run_timed([sys.executable, "-c", CHILD, url])
            got = json.loads(report)
            assert got["tensors"] == count and got["bytes"] == count * (args.tensor_mib << 20), got
            python.append(t)
            inner.append(got["seconds"])
            peaks.append(got["peak_mib"])
            faults.append(got["minor_faults"])
        mib = size / 2**20
        r, p, q = statistics.median(rust), statistics.median(python), statistics.median(inner)
        print(f"model: {count} x {args.tensor_mib} MiB float32 = {mib:.0f} MiB, in {args.dir}; {args.runs} runs, medians")
        print(f"  rust   tensorwire get --mode container  {r:6.2f} s  {mib / r:7.0f} MiB/s")
        print(f"  python Client.retrieve into numpy       {p:6.2f} s  {mib / p:7.0f} MiB/s  (whole process)")
        print(f"  python, Client() to last tensor         {q:6.2f} s  {mib / q:7.0f} MiB/s  (without interpreter start)")
        print(f"  python minor page faults per GiB: {statistics.median(faults) / (mib / 1024):,.0f}")
        print(f"  throughput python / rust: {r / p:.2f}x whole process, {r / q:.2f}x retrieve loop")
        bound = args.tensor_mib + 64
        peak = max(peaks)
        verdict = "within" if peak <= bound else "OVER"
        print(f"  python peak RSS {peak:.0f} MiB (runs: {', '.join(f'{x:.0f}' for x in peaks)}); "
              f"bound largest tensor + 64 MiB = {bound} MiB: {verdict}")
        return 1 if args.check and peak > bound else 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

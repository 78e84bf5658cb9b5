"""Receive a safetensors file with tensorwire and load it with safetensors.numpy.

    python examples/load_safetensors.py
"""

import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

import tensorwire as tw

with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp) / "models"
    root.mkdir()
    save_file({"embed": np.random.rand(1000, 64).astype(np.float32), "bias": np.zeros(64, np.float16)}, root / "model.safetensors")

    with tw.Server("127.0.0.1:0", root=root) as srv:
        got = tw.Client(srv.url).get_file("model.safetensors", Path(tmp) / "received.safetensors")
    print(f"received {got['bytes']} bytes in {got['seconds'] * 1000:.1f} ms, crc {got['crc']:#010x}")

    tensors = load_file(str(Path(tmp) / "received.safetensors"))  # verified before it was renamed into place
    for name, arr in tensors.items():
        print(f"  {name}: {arr.dtype} {arr.shape}")

#!/usr/bin/env python3
"""Writes the small safetensors fixtures in tests/data/safetensors/ with the Python safetensors
library (the reference writer), so the C++ reader is tested on files it did not write and the
C++ writer can be compared byte for byte. Run: python3 tools/golden/make_safetensors_fixtures.py
"""
import json
import os

import numpy as np
from safetensors.numpy import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "safetensors")


def basic():
    # Values the C++ test recomputes: arange patterns in every dtype kbitd supports.
    return {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5,
        "b": np.array([1.0, -2.0, 0.25, 65504.0], dtype=np.float16),
        "c": np.array([-1, 1 << 40], dtype=np.int64),
        "d": np.arange(5, dtype=np.uint8),
        "e": np.array([True, False, True]),
        "f": np.array([[-128, 127], [0, 5]], dtype=np.int8),
        "g": np.array(7, dtype=np.int32),
        "h": np.array([3.5], dtype=np.float64),
        "i": np.array([-3, 300], dtype=np.int16),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    save_file(basic(), os.path.join(OUT, "py_basic.safetensors"), metadata={"format": "pt"})
    save_file({"u": np.array([1, 2, 3], dtype=np.uint16), "ok": np.array([1.5], np.float32)},
              os.path.join(OUT, "py_unsupported_dtype.safetensors"))
    shard_dir = os.path.join(OUT, "py_sharded")
    os.makedirs(shard_dir, exist_ok=True)
    shards = {
        "model-00001-of-00002.safetensors": {
            "model.embed.weight": np.arange(8, dtype=np.float32).reshape(4, 2),
            "model.layers.0.w": np.full((2, 2), 2.0, dtype=np.float16)},
        "model-00002-of-00002.safetensors": {
            "model.layers.1.w": np.full((3,), -1.0, dtype=np.float32),
            "lm_head.weight": np.arange(4, dtype=np.float32).reshape(2, 2)},
    }
    weight_map, total = {}, 0
    for file, tensors in shards.items():
        save_file(tensors, os.path.join(shard_dir, file), metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = file
            total += t.nbytes
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(shard_dir, "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

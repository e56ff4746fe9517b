"""Shared helpers for the kvcodec Python tests (tests/python mirrors python/)."""
import json
import os
import struct
import sys

import numpy as np
import pytest
import torch

import kvcodec

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def rand_pkv(layers=2, heads=2, tokens=300, dim=16, dtype=torch.float16, seed=0, batch_dim=True):
    """A random Hugging Face past_key_values: tuple of (key, value) [1, H, T, D] per layer."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        shape = (1, heads, tokens, dim) if batch_dim else (heads, tokens, dim)
        out.append((torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)))
    return tuple(out)


def assert_pkv_equal(a, b):
    assert len(a) == len(b)
    for (ka, va), (kb, vb) in zip(a, b):
        assert ka.shape == kb.shape and ka.dtype == kb.dtype
        assert torch.equal(ka, kb) and torch.equal(va, vb)


def shared_kv_dir():
    d = os.path.join(os.environ.get("KVCODEC_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared")), "kv")
    return d if os.path.isdir(d) else None


_ST_DT = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "BF16": np.uint16}
_ST_NAME = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}


def read_safetensors(path):
    """{name: numpy array} and metadata of a safetensors file (BF16 comes back as uint16 bit patterns)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[b:end], dtype=_ST_DT[e["dtype"]]).reshape(e["shape"])
    return out, meta


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: numpy array} as safetensors (what a user's own exporter would do)."""
    header, blobs, off = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        header[name] = {"dtype": _ST_NAME[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def torch_from_st(a):
    """A torch tensor of a safetensors array (uint16 = BF16 bits)."""
    if a.dtype == np.uint16:
        return torch.from_numpy(a.astype(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def real_pkv(path):
    t, meta = read_safetensors(path)
    L = sum(1 for k in t if k.startswith("past_key_values.") and k.endswith(".key"))
    pkv = tuple((torch_from_st(t[f"past_key_values.{l}.key"]), torch_from_st(t[f"past_key_values.{l}.value"])) for l in range(L))
    queries = tuple(torch_from_st(t[f"queries.{l}"]) for l in range(L)) if "queries.0" in t else None
    return pkv, queries, meta

"""Inputs are read in place and outputs written in place: no copy of the cache (python/kvcodec/__init__.py)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import kvcodec
from conftest import rand_pkv


def test_decode_into_writes_the_callers_tensors():
    pkv = rand_pkv(layers=2, tokens=200, dtype=torch.bfloat16)
    blob = kvcodec.encode("zstd", pkv)
    dst = tuple((torch.zeros_like(k), torch.zeros_like(v)) for k, v in pkv)
    ptrs = [(k.data_ptr(), v.data_ptr()) for k, v in dst]
    kvcodec.decode_into(blob, dst)
    assert [(k.data_ptr(), v.data_ptr()) for k, v in dst] == ptrs
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(dst, pkv))
    arr = np.zeros((2, 2, 2, 200, 16), dtype=np.float32)
    before = arr.__array_interface__["data"][0]
    kvcodec.decode_into(kvcodec.encode("zstd", torch.from_numpy(np.ones((2, 2, 2, 200, 16), np.float32))), arr)
    assert arr.__array_interface__["data"][0] == before and arr.min() == 1.0


def test_decode_returns_views_of_one_buffer():
    pkv = rand_pkv(layers=3, tokens=64, dtype=torch.float16)
    out = kvcodec.decode(kvcodec.encode("zstd", pkv))
    # one allocation for the whole cache: every tensor shares one storage
    base = out[0][0].storage().data_ptr()
    assert all(k.storage().data_ptr() == base and v.storage().data_ptr() == base for k, v in out)


def test_input_buffers_accept_any_bytes_like_without_copy():
    pkv = rand_pkv(tokens=32)
    blob = kvcodec.encode("zstd", pkv)
    for b in (blob, bytearray(blob), memoryview(blob), np.frombuffer(blob, dtype=np.uint8)):
        assert torch.equal(kvcodec.decode(b)[1][1], pkv[1][1])
    doubled = np.repeat(np.frombuffer(blob, dtype=np.uint8), 2)
    with pytest.raises(kvcodec.BadInputError, match="strided"):
        kvcodec.decode(doubled[::2])


_RSS_SCRIPT = textwrap.dedent("""
    import json, sys, torch, kvcodec
    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    L, H, T, D = 8, 8, 4096, 128   # 128 MiB of f16 (K and V)
    pkv = tuple((torch.empty(1, H, T, D, dtype=torch.float16).uniform_(-1, 1), torch.empty(1, H, T, D, dtype=torch.float16).uniform_(-1, 1)) for _ in range(L))
    cache = sum(k.nbytes + v.nbytes for k, v in pkv) if hasattr(pkv[0][0], "nbytes") else 2 * L * H * T * D * 2
    kvcodec.encode(sys.argv[1], tuple((k[:, :, :256], v[:, :, :256]) for k, v in pkv))  # warm up allocator and codec tables
    def peak_growth(fn):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")   # resets VmHWM to the current RSS
        base = status("VmRSS")
        r = fn()
        return status("VmHWM") - base, r
    enc, blob = peak_growth(lambda: kvcodec.encode(sys.argv[1], pkv, threads=2))
    dst = tuple((torch.empty_like(k).fill_(0), torch.empty_like(v).fill_(0)) for k, v in pkv)
    dec, _ = peak_growth(lambda: kvcodec.decode_into(blob, dst, threads=2))
    print(json.dumps({"cache": cache, "blob": len(blob), "encode_growth": enc, "decode_growth": dec}))
""")


def test_encode_and_decode_make_no_copy_of_the_cache():
    # peak RSS growth during encode/decode of a 128 MiB f16 cache, in a fresh interpreter; a copy of the input (f16) or an
    # f32 conversion would grow it by 128-256 MiB; the container itself (zstd on random data: ~0.8 of the cache, kivi 2-bit:
    # ~1/7) is the output, written into the bytes object that is returned (no second copy)
    import json
    for spec in ("zstd", "kivi:bits=2,residual=0"):
        r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, spec], capture_output=True, text=True, env=os.environ, timeout=600)
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout.strip().splitlines()[-1])
        cache, blob = m["cache"], m["blob"]
        assert cache == 128 << 20
        # beyond the container: the library's working set (a window of segments per thread, coder contexts), ~20 MiB here
        assert m["encode_growth"] - blob <= 0.25 * cache, (spec, m)
        assert m["decode_growth"] <= 0.1 * cache, (spec, m)

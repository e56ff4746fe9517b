#!/usr/bin/env python3
"""kvcodec.Store from Python against the C++ store's own timing of the same calls: put and get of a 2048-token f16
torch cache (Hugging Face past_key_values, --layers x 8 kv heads x head_dim 128) in a file:// store (a temp dir) and,
with --redis HOST:PORT, a running Redis. "python" is the wall time of Store.put/Store.get; "c++" the seconds the
kvcodec::store call reports for itself (put report / last_get): the difference is what the binding costs. Best of
--repeats; each get must serve every token.

    PYTHONPATH=build/python /usr/bin/python3 bench/python_store.py [--layers 8] [--spec kvc:level=5] [--repeats 3]
        [--redis 127.0.0.1:6379]
"""
import argparse
import tempfile
import time

import torch

import kvcodec


def run(url, pkv, toks, spec, repeats):
    put_py, put_cpp, get_py, get_cpp = [], [], [], []
    out = tuple((torch.empty_like(k), torch.empty_like(v)) for k, v in pkv)
    for i in range(repeats):
        st = kvcodec.Store(url, model=f"bench-{time.time_ns()}-{i}", spec=spec)  # a fresh key space: every put writes
        t0 = time.perf_counter()
        rep = st.put(toks, pkv)
        put_py.append(time.perf_counter() - t0)
        put_cpp.append(rep["seconds"])
        assert rep["chunks_written"] == rep["chunks"]
        t0 = time.perf_counter()
        n = st.get(toks, out)
        get_py.append(time.perf_counter() - t0)
        get_cpp.append(st.last_get["seconds"])
        assert n == len(toks), (n, st.last_get["problems"])
        st.remove(toks, pkv)
    return min(put_py), min(put_cpp), min(get_py), min(get_cpp), rep["bytes_written"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--spec", default="kvc:level=5")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--redis", default=None)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    pkv = tuple((torch.randn(1, 8, a.tokens, 128, generator=g).half(), torch.randn(1, 8, a.tokens, 128, generator=g).half())
                for _ in range(a.layers))
    toks = torch.randint(0, 32000, (a.tokens,), generator=g).tolist()
    mb = sum(k.numel() + v.numel() for k, v in pkv) * 2 / 1e6
    print(f"cache: {a.layers} layers x 8 kv heads x {a.tokens} tokens x 128, f16 ({mb:.1f} MB), spec {a.spec}, best of {a.repeats}")
    urls = []
    with tempfile.TemporaryDirectory() as d:
        urls.append(f"file://{d}")
        if a.redis:
            urls.append(f"redis://{a.redis}")
        for url in urls:
            pp, pc, gp, gc, nbytes = run(url, pkv, toks, a.spec, a.repeats)
            kind = url.split(":")[0]
            print(f"{kind:6} stored {nbytes / 1e6:.1f} MB | put python {pp:.3f} s c++ {pc:.3f} s ({pp / pc:.3f}x) | "
                  f"get python {gp:.3f} s c++ {gc:.3f} s ({gp / gc:.3f}x)")


if __name__ == "__main__":
    main()

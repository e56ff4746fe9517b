#!/usr/bin/env python3
"""What the Python module costs over the C++ library, in one process: encode + decode of a 256 MiB f16 torch cache
(Hugging Face past_key_values) through kvcodec.encode / kvcodec.decode_into, against the library's own encode_to +
decode_into of the same tensors timed inside C++ (kvcodec._kvcodec.cpp_timing: the container in a std::vector
reserved to the cache size), alternating, best of --repeats each, and
the peak RSS growth of the Python calls (VmHWM after resetting it through /proc/self/clear_refs).

Bars (issue 14): Python time <= 1.1x the C++ time; no extra copy of the cache: peak RSS growth beyond the container
that is returned <= 0.1x the cache.

    MALLOC_MMAP_THRESHOLD_=33554432 PYTHONPATH=build/python /usr/bin/python3 bench/python_overhead.py [--specs kvc:level=5,kivi:bits=2|rans] [--repeats 5]
        [--threads 1] [--mib 256]

MALLOC_MMAP_THRESHOLD_ fixes glibc's mmap threshold: by default it moves with the sizes freed so far, so whether the
encoder's ~1 MiB block buffers come from mmap (page faults on every use) or the heap depends on what ran before in the
process, which moves either side's encode time by up to ~30% on its own (bench/results/python.txt shows a run without it).
"""
import argparse
import os
import platform
import time

import torch

import kvcodec
from kvcodec import _kvcodec as _C


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def peak_growth(fn):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    base = status("VmRSS")
    t0 = time.perf_counter()
    r = fn()
    dt = time.perf_counter() - t0
    return dt, status("VmHWM") - base, r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--specs", default="kvc:level=5,kivi:bits=2|rans,zstd")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mib", type=int, default=256)
    a = ap.parse_args()

    L, H, D = 16, 8, 128
    T = a.mib * (1 << 20) // (2 * L * H * D * 2)
    g = torch.Generator().manual_seed(0)
    # a smooth-ish synthetic cache (random walk over tokens per channel), so lossless coders have something to find
    pkv = []
    for _ in range(L):
        kv = []
        for _ in range(2):
            x = torch.randn(1, H, T, D, generator=g, dtype=torch.float32).mul_(0.1).cumsum_(2).mul_(0.05)
            kv.append(x.to(torch.float16))
            del x
        pkv.append(tuple(kv))
    pkv = tuple(pkv)
    cache = sum(k.numel() * 2 + v.numel() * 2 for k, v in pkv)
    # destinations touched once (zeros), so neither side pays the first-touch page faults of fresh memory
    dst = tuple((torch.zeros_like(k), torch.zeros_like(v)) for k, v in pkv)
    cpp_dst = tuple((torch.zeros_like(k), torch.zeros_like(v)) for k, v in pkv)
    print(f"# kvcodec Python overhead: {L} layers x {H} kv heads x {T} tokens x head_dim {D}, f16, {cache / 2**20:.0f} MiB; "
          f"threads {a.threads}, best of {a.repeats}; {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"# MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', '(unset: glibc dynamic threshold)')}")
    print(f"{'spec':<22} {'py enc s':>9} {'C++ enc s':>9} {'py dec s':>9} {'C++ dec s':>9} {'py/C++':>7} "
          f"{'container MiB':>13} {'enc RSS+ MiB':>12} {'beyond cont.':>12} {'dec RSS+ MiB':>12}")
    ok = True
    for spec in a.specs.split(","):
        src = kvcodec._source(pkv)
        dsrc = kvcodec._source(cpp_dst, writable=True)
        best = dict(pe=1e9, ce=1e9, pd=1e9, cd=1e9, eg=0, dg=0)
        blob_len = 0
        for r in range(a.repeats):
            # alternate which side runs first, so a slow spell of a shared machine does not favour one side
            if r % 2 == 0:
                ce, cd, n = _C.cpp_timing(spec, src.desc, dsrc.desc, threads=a.threads, layout=src.layout)
            pe, eg, blob = peak_growth(lambda: kvcodec.encode(spec, pkv, threads=a.threads))
            pd, dg, _ = peak_growth(lambda: kvcodec.decode_into(blob, dst, threads=a.threads))
            if r % 2 == 1:
                ce, cd, n = _C.cpp_timing(spec, src.desc, dsrc.desc, threads=a.threads, layout=src.layout)
            assert len(blob) == n, (len(blob), n)
            blob_len = len(blob)
            best.update(pe=min(best["pe"], pe), ce=min(best["ce"], ce), pd=min(best["pd"], pd), cd=min(best["cd"], cd),
                        eg=max(best["eg"], eg), dg=max(best["dg"], dg))
            del blob
        assert all(torch.equal(a0, b0) and torch.equal(a1, b1) for (a0, a1), (b0, b1) in zip(dst, cpp_dst)), "Python and C++ decodes differ"
        ratio = (best["pe"] + best["pd"]) / (best["ce"] + best["cd"])
        beyond = best["eg"] - blob_len
        print(f"{spec:<22} {best['pe']:9.3f} {best['ce']:9.3f} {best['pd']:9.3f} {best['cd']:9.3f} {ratio:7.3f} "
              f"{blob_len / 2**20:13.1f} {best['eg'] / 2**20:12.1f} {beyond / cache:11.3f}x {best['dg'] / 2**20:12.1f}")
        ok &= ratio <= 1.1 and beyond <= 0.1 * cache and best["dg"] <= 0.1 * cache
    print(f"# load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"# bars (py/C++ <= 1.1, RSS growth beyond the returned container <= 0.1x cache, decode RSS growth <= 0.1x cache): "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

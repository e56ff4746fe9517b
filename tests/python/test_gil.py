"""The GIL is released while the library codes: another Python thread runs meanwhile."""
import threading
import time

import torch

import kvcodec
from conftest import rand_pkv


def _ticks_during(fn):
    """How many times another Python thread looped while fn() ran on this one."""
    ticks = [0]
    running = threading.Event()
    stop = threading.Event()

    def spin():
        running.set()
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    running.wait()
    before = ticks[0]
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    during = ticks[0] - before
    stop.set()
    t.join()
    return during, elapsed


def test_encode_and_decode_release_the_gil():
    pkv = rand_pkv(layers=8, heads=8, tokens=2048, dim=64, dtype=torch.float16)  # 32 MiB
    blob = None

    def enc():
        nonlocal blob
        blob = kvcodec.encode("kvc:level=5", pkv, threads=1)

    # with the GIL held for the whole call the other thread could not loop at all (0 ticks; at most a handful
    # around the call's edges); released, it loops ~millions of times per second
    during, elapsed = _ticks_during(enc)
    assert elapsed > 0.05, "the encode is too short to tell"
    assert during > 1000, (during, elapsed)
    during, elapsed = _ticks_during(lambda: kvcodec.decode(blob, threads=1))
    assert during > 1000, (during, elapsed)


def test_a_thread_pool_encodes_in_parallel():
    caches = [rand_pkv(layers=2, heads=4, tokens=512, dim=64, seed=i) for i in range(4)]
    out = [None] * 4

    def work(i):
        out[i] = kvcodec.encode("zstd", caches[i], threads=1)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(4):
        assert out[i] == kvcodec.encode("zstd", caches[i])

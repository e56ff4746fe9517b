"""The GIL is released while the library codes: another Python thread runs meanwhile."""
import threading
import time

import torch

import kvcodec
from conftest import rand_pkv


def _longest_stall(fn):
    """Runs fn() on this thread while another Python thread loops, and returns (longest time the other thread went
    without running during the call, duration of the call). A C call that holds the GIL freezes the other thread
    for the whole call (Python only hands the GIL over between bytecodes); one that releases it does not."""
    gaps = []  # (from, to) of every pause of the loop longer than 1 ms
    running = threading.Event()
    stop = threading.Event()

    def spin():
        now = time.perf_counter
        prev = now()
        running.set()
        while not stop.is_set():
            n = now()
            if n - prev > 1e-3:
                gaps.append((prev, n))
            prev = n
        gaps.append((prev, now()))  # a pause that lasted until stop was set

    t = threading.Thread(target=spin)
    t.start()
    running.wait()
    time.sleep(0.01)
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    stop.set()
    t.join()
    stall = max([min(b, t1) - max(a, t0) for a, b in gaps if b > t0 and a < t1] + [0.0])
    return stall, t1 - t0


def test_the_check_sees_a_held_gil():
    # sorted() of floats is one C call that keeps the GIL: the other thread stalls for (nearly) all of it
    x = [float(i % 7919) * 0.5 for i in range(2_000_000)]
    stall, elapsed = _longest_stall(lambda: sorted(x))
    assert stall > 0.5 * elapsed, (stall, elapsed)


def test_encode_and_decode_release_the_gil():
    pkv = rand_pkv(layers=8, heads=8, tokens=2048, dim=64, dtype=torch.float16)  # 32 MiB
    blob = None

    def enc():
        nonlocal blob
        blob = kvcodec.encode("kvc:level=5", pkv, threads=1)

    stall, elapsed = _longest_stall(enc)
    assert elapsed > 0.05, "the encode is too short to tell"
    assert stall < 0.5 * elapsed, (stall, elapsed)
    stall, elapsed = _longest_stall(lambda: kvcodec.decode(blob, threads=1))
    assert stall < 0.5 * elapsed, (stall, elapsed)


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

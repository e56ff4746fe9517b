"""kvcodec.Store (python/kvcodec/__init__.py over kvcodec::store): a file:// store in a temp dir and a real redis-server
on a free loopback port (it must be installed: scripts/setup installs redis-server; the Redis tests fail without it)."""
import os
import shutil
import socket
import subprocess
import time

import pytest
import torch

import kvcodec
from conftest import assert_pkv_equal, rand_pkv
from test_gil import _longest_stall

LOSSLESS = "zstd"
T = 600  # 3 chunks of 256 (the last one 88 tokens)


def _tokens(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32000, (n,), generator=g).tolist()


def _zeros_like(pkv):
    return tuple((torch.zeros_like(k), torch.zeros_like(v)) for k, v in pkv)


def _rows(pkv, t0, t1):
    return tuple((k[:, :, t0:t1], v[:, :, t0:t1]) for k, v in pkv)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url(tmp_path):
    """A redis-server of our own on a free loopback port, in a temp dir; stopped afterwards."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: run scripts/setup (it installs redis-server)")
    d = tmp_path / "redis"
    d.mkdir()
    for _ in range(5):
        port = _free_port()
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d), "--save", "", "--appendonly", "no",
                                 "--daemonize", "no", "--logfile", str(d / "redis.log")], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline and not _ping(port):
            time.sleep(0.05)
        if proc.poll() is None and _ping(port):
            break
        proc.kill()
        proc.wait()
    else:
        log = (d / "redis.log").read_text() if (d / "redis.log").exists() else ""
        pytest.fail(f"redis-server did not start on a free loopback port: {log[-2000:]}")
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["file", "redis"])
def url(request, tmp_path):
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    return request.getfixturevalue("redis_url")


def test_round_trip_lossless(url):
    pkv = rand_pkv(layers=3, heads=2, tokens=T, dim=16, dtype=torch.float16, seed=1)
    toks = _tokens(T)
    st = kvcodec.Store(url, model="m1", spec=LOSSLESS)
    rep = st.put(toks, pkv)
    assert rep["tokens"] == T and rep["chunks"] == 3 and rep["chunks_written"] == 3 and rep["chunks_present"] == 0
    assert rep["spec"] == kvcodec._C.canonical_spec(LOSSLESS) and rep["bytes_written"] > 0
    out = _zeros_like(pkv)
    assert st.get(toks, out) == T
    assert_pkv_equal(out, pkv)
    assert st.last_get["chunks"] == 3 and st.last_get["problems"] == [] and st.last_get["bytes"] == rep["bytes_written"]
    assert st.contains(toks, pkv) == T and st.contains(toks, (3, 2, 16)) == T
    # a second put of the same context writes nothing new
    assert st.put(toks, pkv)["chunks_present"] == 3
    s = st.stats()
    assert (s["puts"], s["gets"], s["hits"], s["misses"], s["tokens_served"], s["chunks_written"], s["chunks_skipped"]) == (2, 1, 1, 0, T, 3, 3)
    es = st.entries()
    assert len(es) == 1 and es[0]["key"] == rep["entry_key"] and es[0]["tokens"] == T and es[0]["final"]
    assert (es[0]["model"], es[0]["layers"], es[0]["kv_heads"], es[0]["head_dim"]) == ("m1", 3, 2, 16)
    assert len(st.entries(all=True)) == 3
    assert st.entry(rep["entry_key"])["chunk_keys"] == es[0]["chunk_keys"] and st.entry("kvc:v1:m:" + "0" * 32) is None
    # another process (a new Store on the same storage) sees it
    other = kvcodec.Store(url, model="m1")
    out2 = _zeros_like(pkv)
    assert other.get(toks, out2) == T
    assert_pkv_equal(out2, pkv)


def test_lossy_spec_equals_the_codec_per_chunk(url):
    pkv = rand_pkv(layers=2, heads=2, tokens=T, dim=32, dtype=torch.float32, seed=2)
    toks = _tokens(T, seed=2)
    st = kvcodec.Store(url, model="m1", chunk_tokens=256)  # default spec kvc:level=5
    assert st.spec == kvcodec._C.canonical_spec("kvc:level=5")
    st.put(toks, pkv)
    out = _zeros_like(pkv)
    assert st.get(toks, out) == T
    ref = _zeros_like(pkv)
    for t0 in range(0, T, 256):
        t1 = min(T, t0 + 256)
        kvcodec.decode_into(kvcodec.encode("kvc:level=5", _rows(pkv, t0, t1)), _rows(ref, t0, t1))
    assert_pkv_equal(out, ref)
    assert not torch.equal(out[0][0], pkv[0][0])  # lossy: a raw copy would be noticed


def test_longest_prefix_and_miss(url):
    pkv = rand_pkv(layers=2, heads=2, tokens=T, dim=16, dtype=torch.bfloat16, seed=3)
    toks = _tokens(T, seed=3)
    st = kvcodec.Store(url, model="m1", spec=LOSSLESS)
    st.put(toks[:512], _rows(pkv, 0, 512))  # only the first two chunks' context
    out = _zeros_like(pkv)
    assert st.contains(toks, pkv) == 512
    assert st.get(toks, out) == 512
    assert_pkv_equal(_rows(out, 0, 512), _rows(pkv, 0, 512))
    # a context that diverges inside chunk 1 gets chunk 0 only
    div = list(toks)
    div[300] += 1
    out = _zeros_like(pkv)
    assert st.get(div, out) == 256
    assert_pkv_equal(_rows(out, 0, 256), _rows(pkv, 0, 256))
    # a shorter request: its own last chunk (tokens 0..299) was never stored
    short = _zeros_like(_rows(pkv, 0, 300))
    assert st.get(toks[:300], short) == 256
    # a context that diverges in its first token: a miss, nothing written
    miss = [toks[0] + 1] + toks[1:]
    out = _zeros_like(pkv)
    assert st.get(miss, out) == 0
    assert st.last_get["chunks"] == 0 and st.last_get["spec"] == ""
    assert all(not k.any() and not v.any() for k, v in out)
    assert st.contains(miss, pkv) == 0
    s = st.stats()
    assert (s["hits"], s["misses"]) == (3, 1)
    # removed: a miss afterwards
    assert st.remove(toks[:512], pkv) > 0
    assert st.get(toks, out) == 0 and st.entries() == []
    # removed by entry key: its markers and chunks go (4 keys: 2 markers, 2 chunks)
    key = st.put(toks[:512], _rows(pkv, 0, 512))["entry_key"]
    assert st.get(toks, out) == 512
    assert st.remove(key=key) == 4
    assert st.get(toks, out) == 0 and st.remove(key=key) == 0
    with pytest.raises(kvcodec.UsageError, match="tokens"):
        st.remove(toks)


def test_another_model_or_shape_is_never_served(url):
    pkv = rand_pkv(layers=2, heads=2, tokens=T, dim=16, dtype=torch.float16, seed=4)
    toks = _tokens(T, seed=4)
    kvcodec.Store(url, model="llama", spec=LOSSLESS).put(toks, pkv)
    other = kvcodec.Store(url, model="mistral", spec=LOSSLESS)
    out = _zeros_like(pkv)
    assert other.get(toks, out) == 0 and other.contains(toks, pkv) == 0
    assert all(not k.any() and not v.any() for k, v in out)
    # same model, another shape (4 heads of 8 instead of 2 of 16)
    wide = rand_pkv(layers=2, heads=4, tokens=T, dim=8, dtype=torch.float16, seed=5)
    assert kvcodec.Store(url, model="llama").get(toks, _zeros_like(wide)) == 0
    # same model and shape, another chunk size
    assert kvcodec.Store(url, model="llama", chunk_tokens=128).get(toks, _zeros_like(pkv)) == 0
    assert kvcodec.Store(url, model="llama").get(toks, out) == T


def test_other_layouts_numpy_and_stacked(tmp_path):
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(6)
    stacked = torch.randn(2, 2, 2, 300, 16, generator=g)  # [L, 2, H, T, D] f32
    toks = _tokens(300, seed=6)
    st = kvcodec.Store(f"file://{tmp_path}", model="m", spec=LOSSLESS)
    st.put(toks, stacked)
    out = np.zeros((2, 2, 2, 300, 16), dtype=np.float32)
    assert st.get(toks, out) == 300
    assert np.array_equal(out, stacked.numpy())
    ro = np.zeros((2, 2, 2, 300, 16), dtype=np.float32)
    ro.flags.writeable = False
    with pytest.raises(kvcodec.BadInputError, match="read-only"):
        st.get(toks, ro)


def test_bad_urls_and_inputs(tmp_path):
    with pytest.raises(kvcodec.UsageError, match="ftp://nowhere.*expected file://DIR"):
        kvcodec.Store("ftp://nowhere", model="m")
    with pytest.raises(kvcodec.UsageError, match="HOST:PORT|port"):
        kvcodec.Store("redis://127.0.0.1", model="m")
    with pytest.raises(kvcodec.UsageError, match="unknown option 'bogus'"):
        kvcodec.Store(f"redis://127.0.0.1:{_free_port()}?bogus=1", model="m")
    port = _free_port()  # nothing listens there: a clear io error naming the server
    with pytest.raises(kvcodec.IOError, match=f"127.0.0.1:{port}") as e:
        kvcodec.Store(f"redis://127.0.0.1:{port}?connect_timeout_ms=500&retries=0", model="m")
    assert isinstance(e.value, OSError)
    with pytest.raises(kvcodec.UsageError, match="model"):
        kvcodec.Store(f"file://{tmp_path}", model="")
    with pytest.raises(kvcodec.UsageError, match="chunk_tokens must be >= 1"):
        kvcodec.Store(f"file://{tmp_path}", model="m", chunk_tokens=0)
    with pytest.raises(kvcodec.UsageError):
        kvcodec.Store(f"file://{tmp_path}", model="m", spec="nosuchcodec:level=5")
    st = kvcodec.Store(f"file://{tmp_path}", model="m")
    pkv = rand_pkv(tokens=300)
    with pytest.raises(kvcodec.BadInputError, match="tokens"):
        st.put(_tokens(299), pkv)  # one id per token of the cache
    with pytest.raises(kvcodec.BadInputError, match="tokens"):
        st.get(_tokens(301), _zeros_like(pkv))
    with pytest.raises(kvcodec.BadInputError, match="sequence of ints"):
        st.put(None, pkv)
    with pytest.raises(kvcodec.UsageError, match="drops tokens"):
        st.put(_tokens(300), pkv, spec="knorm:keep=0.5")


def test_store_calls_release_the_gil(tmp_path):
    # 128 MiB: the get must last long enough (> 0.05 s) to tell a released GIL from a held one
    pkv = rand_pkv(layers=16, heads=8, tokens=2048, dim=128, dtype=torch.float16, seed=7)
    toks = _tokens(2048, seed=7)
    st = kvcodec.Store(f"file://{tmp_path}", model="m", threads=1)
    stall, elapsed = _longest_stall(lambda: st.put(toks, pkv))
    assert elapsed > 0.05, "the put is too short to tell"
    assert stall < 0.5 * elapsed, (stall, elapsed)
    out = _zeros_like(pkv)
    stall, elapsed = _longest_stall(lambda: st.get(toks, out))
    assert st.last_get["tokens"] == 2048
    assert elapsed > 0.05, "the get is too short to tell"
    assert stall < 0.5 * elapsed, (stall, elapsed)


def test_tiered_store_memory_directory_redis(redis_url, tmp_path):
    """tiered://: contexts placed by the planner, served from each tier with their bytes, promoted on a hit, moved down
    when the memory tier is full, per-tier stats, close() moving the memory tier down, and a reopened store reading
    the records of the persistent tiers back."""
    T2 = 256
    pkvs = [rand_pkv(layers=2, heads=2, tokens=T2, dim=16, dtype=torch.float16, seed=s) for s in range(3)]
    toks = [_tokens(T2, seed=10 + s) for s in range(3)]
    probe = kvcodec.Store("tiered://mem", model="m", chunk_tokens=128)
    size = probe.put(toks[0], pkvs[0], spec=LOSSLESS)["bytes_written"]
    url = f"tiered://mem:{size * 3 // 2}B,file://{tmp_path / 'f'}:{size * 3 // 2}B,{redis_url}"
    st = kvcodec.Store(url, model="m", spec=LOSSLESS, chunk_tokens=128)
    assert st.tiered and st.spec == kvcodec._C.canonical_spec(LOSSLESS)
    keys = [st.put(t, p)["entry_key"] for t, p in zip(toks, pkvs)]
    tiers = [st.entry(k)["tier"] for k in keys]
    assert sorted(tiers) == [0, 1, 2]
    s = st.stats()["tiers"]
    assert [x["contexts"] for x in s] == [1, 1, 1]
    assert all(x["bytes"] <= x["capacity_bytes"] for x in s)
    assert s[2]["url"] == redis_url
    # A hit from Redis: the bytes stored, then the context is promoted to memory (the one there moves down).
    i = tiers.index(2)
    out = _zeros_like(pkvs[i])
    assert st.get(toks[i], out) == T2
    assert_pkv_equal(out, pkvs[i])
    assert st.last_get["tier"] == 2 and st.last_get["promoted_to"] == 0
    assert [x["contexts"] for x in st.stats()["tiers"]] == [1, 1, 1]
    for t, p in zip(toks, pkvs):
        out = _zeros_like(p)
        assert st.get(t, out) == T2
        assert_pkv_equal(out, p)
    assert st.close() == 1
    # Reopened: the directory's and Redis's contexts are found again.
    st2 = kvcodec.Store(url, model="m", spec=LOSSLESS, chunk_tokens=128)
    assert len(st2.entries()) == 3
    out = _zeros_like(pkvs[0])
    assert st2.get(toks[0], out) == T2
    assert_pkv_equal(out, pkvs[0])
    assert st2.contains(toks[0], pkvs[0]) == T2
    assert st2.remove(toks[0], pkvs[0]) == 1
    assert st2.get(toks[0], _zeros_like(pkvs[0])) == 0
    # The planner chooses the level when no spec is given (here from the caller's profile).
    st3 = kvcodec.Store(f"tiered://mem:1MB,file://{tmp_path / 'g'}", model="m", chunk_tokens=128)
    r = st3.put(toks[1], pkvs[1], profile=[("kvc:level=1", 60000, 0.001, 1e-4), ("kvc:level=9", 10000, 0.001, 1e-4)])
    assert r["level"] == "kvc:level=9" and r["tier"] == 0
    with pytest.raises(kvcodec.UsageError):
        kvcodec.Store("tiered://mem:12XB", model="m")

"""kvcodec.LMCacheSerde: LMCache's serde interface for its KV chunk layout, and byte equality with the CLI.

The interface checked (LMCache's lmcache.storage_backend.serde; LMCache itself cannot be installed here):
    serializer.to_bytes(t: torch.Tensor) -> bytes        t: a KV chunk [num_layers, 2, num_tokens, kv_heads * head_dim]
    deserializer.from_bytes(b: bytes) -> torch.Tensor    the chunk back, same shape and dtype
    CreateSerde(serde_type: str, config, metadata) -> (serializer, deserializer), metadata.kv_shape =
        (num_layers, 2, chunk_size, kv_heads, head_dim), metadata.kv_dtype
"""
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

import kvcodec
from conftest import DTYPES, write_safetensors


def chunk(layers=4, tokens=256, heads=2, dim=32, dtype=torch.float16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(layers, 2, tokens, heads * dim, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_lossless_and_lossy(dtype):
    t = chunk(dtype=dtype)
    serde = kvcodec.LMCacheSerde("zstd", kv_heads=2, head_dim=32)
    b = serde.to_bytes(t)
    assert isinstance(b, bytes)
    back = serde.from_bytes(b)
    assert back.shape == t.shape and back.dtype == dtype and torch.equal(back, t)
    h = kvcodec.info(b)
    assert h["shape"]["kv_heads"] == 2 and h["shape"]["head_dim"] == 32 and h["shape"]["tokens"] == 256
    # a lossy spec: smaller, close
    lossy = kvcodec.LMCacheSerde("kvc:level=5", head_dim=32)
    b = lossy.to_bytes(t)
    assert len(b) < t.numel() * t.element_size() / 3
    back = lossy.from_bytes(b)
    err = (back.float() - t.float()).norm() / t.float().norm()
    assert back.shape == t.shape and 0 < err < 0.3


def test_chunk_heads_are_the_kv_heads():
    # the serde reads [L, 2, T, H*D] with head h at channels [h*D, (h+1)*D): the same cache as HF tensors encodes identically
    t = chunk(layers=2, tokens=100, heads=4, dim=8, dtype=torch.float32)
    pkv = tuple((t[l, 0].reshape(100, 4, 8).permute(1, 0, 2).unsqueeze(0), t[l, 1].reshape(100, 4, 8).permute(1, 0, 2).unsqueeze(0)) for l in range(2))
    assert kvcodec.LMCacheSerde("kivi:bits=2", kv_heads=4).to_bytes(t) == kvcodec.encode("kivi:bits=2", pkv)


def test_bytes_equal_the_cli(tmp_path):
    cli = os.environ.get("KVCODEC_CLI")
    if not cli or not os.path.exists(cli):
        pytest.skip("KVCODEC_CLI (the built kvcodec command) not given; ctest sets it when the CLI is built")
    L, T, H, D = 3, 300, 2, 64
    for np_dtype, spec in ((np.float16, "kvc:level=5"), (np.float32, "cachegen"), (np.float16, "kivi:bits=2|rans")):
        rng = np.random.default_rng(5)
        arr = rng.standard_normal((L, 2, T, H * D)).astype(np_dtype)
        serde = kvcodec.LMCacheSerde(spec, kv_heads=H, head_dim=D)
        ours = serde.to_bytes(torch.from_numpy(arr))
        # the same cache as a Hugging Face safetensors dump, written with numpy
        tensors = {}
        for l in range(L):
            for kv, name in ((0, "key"), (1, "value")):
                tensors[f"past_key_values.{l}.{name}"] = arr[l, kv].reshape(T, H, D).transpose(1, 0, 2)[None]
        dump, out = tmp_path / "cache.safetensors", tmp_path / "cache.kvc"
        write_safetensors(dump, tensors)
        subprocess.run([cli, "encode", "-q", "-c", spec, str(dump), str(out)], check=True, timeout=300)
        theirs = out.read_bytes()
        assert ours == theirs, spec
        out.unlink()
        # and the CLI's container decodes through the serde
        assert torch.equal(serde.from_bytes(theirs), serde.from_bytes(ours))


class _Meta:
    def __init__(self, kv_shape, kv_dtype):
        self.kv_shape, self.kv_dtype = kv_shape, kv_dtype


def test_lmcache_register_answers_remote_serde(monkeypatch):
    # a stand-in for lmcache.storage_backend.serde with LMCache's CreateSerde signature
    calls = []

    def create_serde(serde_type, config, metadata):
        calls.append(serde_type)
        if serde_type == "torch":
            return "torch-ser", "torch-deser"
        raise ValueError(f"Invalid serde type: {serde_type}")

    mods = {n: types.ModuleType(n) for n in ("lmcache", "lmcache.storage_backend", "lmcache.storage_backend.serde")}
    mods["lmcache.storage_backend.serde"].CreateSerde = create_serde
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    mod = kvcodec.lmcache_register("kvc:level=3")
    meta = _Meta((4, 2, 256, 2, 32), torch.bfloat16)
    s, d = mod.CreateSerde("kvcodec", None, meta)
    t = chunk(dtype=torch.bfloat16)
    back = d.from_bytes(s.to_bytes(t))
    assert back.shape == t.shape and back.dtype == torch.bfloat16
    assert mod.CreateSerde("torch", None, meta) == ("torch-ser", "torch-deser")
    with pytest.raises(ValueError):
        mod.CreateSerde("nope", None, meta)
    assert calls == ["torch", "nope"]


def test_bad_chunks():
    serde = kvcodec.LMCacheSerde("zstd", kv_heads=3, head_dim=32)
    with pytest.raises(kvcodec.BadInputError, match="96"):
        serde.to_bytes(chunk(heads=2, dim=32))
    with pytest.raises(kvcodec.BadInputError, match="rank"):
        serde.to_bytes(torch.zeros(2, 16, 96))
    with pytest.raises(kvcodec.CorruptError):
        serde.from_bytes(serde.to_bytes(chunk(heads=3, dim=32))[:-5])

"""Round trips through kvcodec.encode/decode/decode_into for every input layout and dtype (python/kvcodec/__init__.py)."""
import types

import numpy as np
import pytest
import torch

import kvcodec
from conftest import DTYPES, assert_pkv_equal, rand_pkv

LOSSLESS = "zstd"


@pytest.mark.parametrize("dtype", DTYPES)
def test_hf_tuple_lossless_round_trip(dtype):
    pkv = rand_pkv(layers=3, heads=2, tokens=300, dim=16, dtype=dtype)
    blob = kvcodec.encode(LOSSLESS, pkv)
    assert isinstance(blob, bytes)
    out = kvcodec.decode(blob)
    assert isinstance(out, tuple) and len(out) == 3
    assert out[0][0].shape == (1, 2, 300, 16) and out[0][0].dtype == dtype
    assert_pkv_equal(out, pkv)
    h = kvcodec.info(blob, verify=True)
    assert h["shape"] == {"layers": 3, "kv_heads": 2, "q_heads": 0, "head_dim": 16, "tokens": 300}
    assert h["dtype"] == {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}[dtype]
    assert h["layout"] == "hf_4d" and h["verified"] and h["container_bytes"] == len(blob)
    assert len(h["segments"]) == 3 * 2  # 300 tokens in chunks of 256, per layer


@pytest.mark.parametrize("dtype", DTYPES)
def test_hf_3d_and_lossy(dtype):
    pkv = rand_pkv(layers=2, heads=4, tokens=512, dim=32, dtype=dtype, batch_dim=False)
    blob = kvcodec.encode("kivi:bits=4", pkv)
    assert kvcodec.info(blob)["layout"] == "hf_3d"
    out = kvcodec.decode(blob)
    k0 = pkv[0][0].float()
    err = (out[0][0][0].float() - k0).norm() / k0.norm()
    assert 0 < err < 0.2
    raw = sum(k.numel() + v.numel() for k, v in pkv) * k0.element_size()
    assert len(blob) < raw / 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_dynamic_cache_duck_types(dtype):
    pkv = rand_pkv(dtype=dtype)
    old = types.SimpleNamespace(key_cache=[k for k, _ in pkv], value_cache=[v for _, v in pkv])
    new = types.SimpleNamespace(layers=[types.SimpleNamespace(keys=k, values=v) for k, v in pkv])
    ref = kvcodec.encode(LOSSLESS, pkv)
    assert kvcodec.encode(LOSSLESS, old) == ref
    assert kvcodec.encode(LOSSLESS, new) == ref
    # decoding into a cache object writes its tensors
    dst = types.SimpleNamespace(layers=[types.SimpleNamespace(keys=torch.zeros_like(k), values=torch.zeros_like(v)) for k, v in pkv])
    kvcodec.decode_into(ref, dst)
    assert_pkv_equal(tuple((x.keys, x.values) for x in dst.layers), pkv)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stacked_torch(dtype):
    g = torch.Generator().manual_seed(1)
    kv = torch.randn(3, 2, 2, 40, 8, generator=g).to(dtype)
    blob = kvcodec.encode(LOSSLESS, kv)
    assert kvcodec.info(blob)["layout"] == "stacked"
    out = torch.zeros_like(kv)
    kvcodec.decode_into(blob, out)
    assert torch.equal(out, kv)
    # the same cache as a tuple of per-layer views of the stacked tensor gives the same container bar the layout hint
    pkv = tuple((kv[l, 0].unsqueeze(0), kv[l, 1].unsqueeze(0)) for l in range(3))
    assert_pkv_equal(kvcodec.decode(blob), pkv)


@pytest.mark.parametrize("np_dtype", [np.float16, np.float32])
def test_numpy_stacked_and_tuple(np_dtype):
    rng = np.random.default_rng(2)
    kv = rng.standard_normal((2, 2, 3, 50, 8)).astype(np_dtype)
    blob = kvcodec.encode(LOSSLESS, kv)
    out = np.zeros_like(kv)
    kvcodec.decode_into(blob, out)
    assert np.array_equal(out, kv)
    pkv = tuple((kv[l, 0][None], kv[l, 1][None]) for l in range(2))
    blob2 = kvcodec.encode(LOSSLESS, pkv)
    dec = kvcodec.decode(blob2)
    assert np.array_equal(dec[1][1].numpy(), kv[1, 1][None])


def test_non_contiguous_views_are_read_in_place():
    # [1, T, H, D] storage permuted to [1, H, T, D]: strided, the same strides in every layer
    g = torch.Generator().manual_seed(3)
    base = [(torch.randn(1, 64, 2, 8, generator=g), torch.randn(1, 64, 2, 8, generator=g)) for _ in range(2)]
    pkv = tuple((k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)) for k, v in base)
    assert not pkv[0][0].is_contiguous()
    blob = kvcodec.encode(LOSSLESS, pkv)
    assert_pkv_equal(kvcodec.decode(blob), tuple((k.contiguous(), v.contiguous()) for k, v in pkv))
    # decoding into strided destinations too
    dst = tuple((torch.zeros(1, 64, 2, 8).permute(0, 2, 1, 3), torch.zeros(1, 64, 2, 8).permute(0, 2, 1, 3)) for _ in range(2))
    kvcodec.decode_into(blob, dst)
    assert_pkv_equal(tuple((k.contiguous(), v.contiguous()) for k, v in dst), tuple((k.contiguous(), v.contiguous()) for k, v in pkv))


@pytest.mark.parametrize("dtype", DTYPES)
def test_vllm_paged(dtype):
    L, NB, BS, H, D, T = 2, 12, 16, 2, 8, 70  # 5 blocks for 70 tokens
    g = torch.Generator().manual_seed(4)
    pools = [torch.randn(2, NB, BS, H, D, generator=g).to(dtype) for _ in range(L)]
    table = [7, 2, 11, 0, 5]
    blob = kvcodec.encode(LOSSLESS, pools, block_table=table, num_tokens=T)
    dense = kvcodec.decode(blob)
    for l in range(L):
        for kv in range(2):
            # gather the sequence from the pool: [T, H, D] -> [1, H, T, D]
            seq = torch.cat([pools[l][kv, b] for b in table])[:T].permute(1, 0, 2).unsqueeze(0)
            assert torch.equal(dense[l][kv], seq)
    # decode into another pool with another block table
    other = [torch.zeros(2, NB, BS, H, D, dtype=dtype) for _ in range(L)]
    table2 = [1, 3, 4, 9, 10]
    kvcodec.decode_into(blob, other, block_table=table2, num_tokens=T)
    for l in range(L):
        for kv in range(2):
            a = torch.cat([other[l][kv, b] for b in table2])[:T]
            b = torch.cat([pools[l][kv, b] for b in table])[:T]
            assert torch.equal(a, b)
    # separate K and V pools per layer (a (K, V) pair) read the same
    pairs = [(p[0], p[1]) for p in pools]
    assert kvcodec.encode(LOSSLESS, pairs, block_table=table, num_tokens=T) == blob


def test_token_range_decode():
    pkv = rand_pkv(layers=2, heads=2, tokens=600, dim=8, dtype=torch.float32)
    blob = kvcodec.encode(LOSSLESS, pkv, chunk_tokens=128)
    part = kvcodec.decode(blob, token_begin=100, token_end=390)
    assert part[0][0].shape == (1, 2, 290, 8)
    assert_pkv_equal(part, tuple((k[:, :, 100:390], v[:, :, 100:390]) for k, v in pkv))
    # into a slice of a bigger cache (a strided destination)
    big = tuple((torch.zeros_like(k), torch.zeros_like(v)) for k, v in pkv)
    res = kvcodec.decode_into(blob, tuple((k[:, :, 100:390], v[:, :, 100:390]) for k, v in big), token_begin=100, token_end=390)
    assert res["token_begin"] == 100 and res["token_end"] == 390 and res["kept"] is None
    assert torch.equal(big[1][1][:, :, 100:390], pkv[1][1][:, :, 100:390])
    assert big[1][1][:, :, :100].abs().sum() == 0 and big[1][1][:, :, 390:].abs().sum() == 0


def test_decode_dtype_override_and_side_fields():
    pkv = rand_pkv(tokens=40, dtype=torch.bfloat16)
    blob = kvcodec.encode(LOSSLESS, pkv, tokens=list(range(40)), positions=np.arange(40) + 7, metadata={"model": "test"})
    h = kvcodec.info(blob)
    assert h["tokens"] == list(range(40)) and h["positions"][0] == 7 and h["metadata"] == {"model": "test"}
    out = kvcodec.decode(blob, dtype=torch.float32)
    assert out[0][0].dtype == torch.float32
    assert torch.equal(out[0][0], pkv[0][0].float())


def test_list_codecs_and_eval():
    names = {c["name"]: c for c in kvcodec.list_codecs()}
    assert {"kvc", "cachegen", "kivi", "raw", "zstd", "snapkv"} <= set(names)
    assert names["kvc"]["kind"] == "preset" and names["snapkv"]["kind"] == "drop"
    assert any(p["key"] == "bits" for p in names["kivi"]["params"])
    pkv = rand_pkv(layers=2, heads=2, tokens=64, dim=16, dtype=torch.float32)
    r = kvcodec.eval("kivi:bits=2,residual=0", pkv, repeats=1)
    assert r["bits_per_element"] < 4 and r["ratio_vs_fp16"] > 4 and r["attention"] is None
    assert 0 < r["key"]["rel_fro_error"] < 1
    q = tuple(torch.randn(1, 4, 64, 16) for _ in range(2))
    r = kvcodec.eval("kivi:bits=2,residual=0", pkv, q, repeats=1)
    assert r["attention"] is not None and r["attention"]["rows"] > 0
    assert kvcodec.eval(LOSSLESS, pkv, repeats=1)["lossless"]


def test_progress_callback():
    pkv = rand_pkv(layers=3, tokens=600, dtype=torch.float16)
    seen = []
    blob = kvcodec.encode(LOSSLESS, pkv, chunk_tokens=100, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (18, 18) and [d for d, _ in seen] == list(range(1, 19))
    seen.clear()
    kvcodec.decode(blob, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == 18 and seen[-1][1] == 18

    class Stop(Exception):
        pass

    def boom(d, t):
        raise Stop("user abort")

    with pytest.raises(Stop, match="user abort"):
        kvcodec.encode(LOSSLESS, pkv, chunk_tokens=100, progress=boom)
    with pytest.raises(Stop):
        kvcodec.decode(blob, progress=boom)


def test_one_sequence_of_a_batch_in_place():
    g = torch.Generator().manual_seed(6)
    batch = tuple((torch.randn(3, 2, 40, 8, generator=g).half(), torch.randn(3, 2, 40, 8, generator=g).half()) for _ in range(2))
    blob = kvcodec.encode(LOSSLESS, batch, batch_index=1)
    assert_pkv_equal(kvcodec.decode(blob), tuple((k[1:2], v[1:2]) for k, v in batch))
    # decoded into row 2 of another batch, rows 0 and 1 untouched
    other = tuple((torch.zeros_like(k), torch.zeros_like(v)) for k, v in batch)
    kvcodec.decode_into(blob, other, batch_index=2)
    assert torch.equal(other[1][0][2], batch[1][0][1]) and other[1][0][:2].abs().sum() == 0
    with pytest.raises(kvcodec.BadInputError, match="batch_index"):
        kvcodec.encode(LOSSLESS, batch)
    with pytest.raises(kvcodec.BadInputError, match="batch_index"):
        kvcodec.encode(LOSSLESS, batch, batch_index=3)

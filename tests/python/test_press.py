"""kvcodec.press(spec): kvpress-style compression of a past_key_values (drop stages choose tokens, per head)."""
import pytest
import torch

import kvcodec
from conftest import rand_pkv


def _nbytes(pkv):
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in pkv)


def test_knorm_press_is_really_smaller():
    pkv = rand_pkv(layers=2, heads=2, tokens=1024, dim=64, dtype=torch.float16)
    p = kvcodec.press("knorm:keep=0.25")(pkv)
    assert p.uniform()
    small = p.past_key_values
    assert small[0][0].shape == (1, 2, 256, 64) and small[0][0].dtype == torch.float16
    assert _nbytes(small) == _nbytes(pkv) // 4
    assert p.nbytes < _nbytes(pkv) / 3
    # the kept rows are the original rows (no quantizer in the spec), at the kept positions, sorted
    for l in range(2):
        for h in range(2):
            idx = p.kept[l][h]
            assert torch.all(idx[1:] > idx[:-1])
            assert torch.equal(p.keys[l][h], pkv[l][0][0, h, idx])
            assert torch.equal(small[l][1][0, h], pkv[l][1][0, h, idx])
    # knorm keeps the lowest-norm keys
    norms = pkv[0][0][0, 0].float().norm(dim=-1)
    kept = set(p.kept[0][0].tolist())
    dropped = [t for t in range(1024) if t not in kept]
    assert norms[list(kept)].max() <= norms[dropped].min()


def test_query_presses_and_ragged_heads():
    pkv = rand_pkv(layers=2, heads=2, tokens=300, dim=16, dtype=torch.float32)
    q = tuple(torch.randn(1, 4, 300, 16, generator=torch.Generator().manual_seed(l)) for l in range(2))
    with pytest.raises(kvcodec.BadInputError, match="queries"):
        kvcodec.press("snapkv:keep=0.25")(pkv)
    p = kvcodec.press("snapkv:keep=0.25")(pkv, queries=q)
    assert p.uniform() and p.kept_tokens() == 2 * 2 * 75
    # Ada-KV gives heads different budgets: ragged per head, past_key_values refuses, .keys holds each head's rows
    p = kvcodec.press("adakv:keep=0.25")(pkv, queries=torch.stack([x[0] for x in q]))
    counts = [[len(i) for i in layer] for layer in p.kept]
    assert not p.uniform() and sum(map(sum, counts)) == 2 * 2 * 75
    with pytest.raises(kvcodec.UsageError, match="ragged"):
        p.past_key_values
    assert [[k.shape[0] for k in layer] for layer in p.keys] == counts
    # pyramid budgets shrink with depth; with a quantizer the rows are the decoded (lossy) ones
    p = kvcodec.press("pyramidkv:keep=0.25|kivi:bits=4,residual=0")(pkv, queries=q)
    n = [len(p.kept[l][0]) for l in range(2)]
    assert n[0] > n[1]
    idx = p.kept[0][0]
    ref = pkv[0][0][0, 0, idx]
    assert 0 < (p.keys[0][0] - ref).norm() / ref.norm() < 0.2


def test_press_without_a_drop_stage_keeps_every_token():
    pkv = rand_pkv(tokens=64)
    p = kvcodec.press("kivi:bits=2,residual=0")(pkv)
    assert p.kept_tokens() == 2 * 2 * 64 and p.past_key_values[0][0].shape == pkv[0][0].shape


def test_composed_and_wrapping_presses():
    pkv = rand_pkv(layers=2, heads=2, tokens=200, dim=16, dtype=torch.float32)
    q = tuple(torch.randn(1, 4, 200, 16, generator=torch.Generator().manual_seed(l)) for l in range(2))
    # two drop stages in one spec: the second keeps half of the first's survivors
    p = kvcodec.press("streamingllm:keep=0.5|snapkv:keep=0.5,window=16")(pkv, queries=q)
    assert p.uniform() and p.kept_tokens() == 2 * 2 * 50
    first = kvcodec.press("streamingllm:keep=0.5")(pkv)
    for layer_both, layer_first in zip(p.kept, first.kept):
        for both, one in zip(layer_both, layer_first):
            assert set(both.tolist()) <= set(one.tolist())
    for spec in ("criticalkv:scorer=snapkv,window=16,keep=0.25", "block:scorer=knorm,keep=0.25,block=32"):
        p = kvcodec.press(spec)(pkv, queries=q)
        assert p.uniform() and p.kept_tokens() == 2 * 2 * 50
    # block with a per-token scorer keeps what the scorer keeps on the whole prefix
    a = kvcodec.press("block:scorer=knorm,keep=0.25,block=16")(pkv)
    b = kvcodec.press("knorm:keep=0.25")(pkv)
    assert all((x == y).all() for la, lb in zip(a.kept, b.kept) for x, y in zip(la, lb))

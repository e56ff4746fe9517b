"""Bad inputs raise kvcodec's typed Python exceptions with clear messages, never crash the interpreter."""
import numpy as np
import pytest
import torch

import kvcodec
from conftest import rand_pkv


def test_exception_hierarchy():
    for cls in (kvcodec.BadInputError, kvcodec.CorruptError, kvcodec.UsageError):
        assert issubclass(cls, kvcodec.Error) and issubclass(cls, ValueError)
    assert issubclass(kvcodec.UnsupportedError, NotImplementedError)
    assert issubclass(kvcodec.IOError, OSError)


def test_bad_spec():
    with pytest.raises(kvcodec.UsageError, match="nosuchstage"):
        kvcodec.encode("nosuchstage", rand_pkv())
    with pytest.raises(kvcodec.UsageError):
        kvcodec.encode("kivi:bits=99", rand_pkv())
    with pytest.raises(kvcodec.UsageError):
        kvcodec.Encoder("zstd|kivi")  # stages out of order


def test_wrong_rank():
    with pytest.raises(kvcodec.BadInputError, match="rank 2"):
        kvcodec.encode("zstd", ((torch.zeros(4, 8), torch.zeros(4, 8)),))
    with pytest.raises(kvcodec.BadInputError, match=r"shape \[3, 8\]"):
        kvcodec.encode("zstd", torch.zeros(3, 8))
    with pytest.raises(kvcodec.BadInputError, match="batch_index"):
        kvcodec.encode("zstd", ((torch.zeros(2, 2, 4, 8), torch.zeros(2, 2, 4, 8)),))
    with pytest.raises(kvcodec.BadInputError, match="empty cache"):
        kvcodec.encode("zstd", ((torch.zeros(1, 2, 0, 8), torch.zeros(1, 2, 0, 8)),))
    with pytest.raises(kvcodec.BadInputError, match="at least one layer"):
        kvcodec.encode("zstd", ())
    with pytest.raises(kvcodec.BadInputError, match="NoneType"):
        kvcodec.encode("zstd", None)
    with pytest.raises(kvcodec.BadInputError, match=r"\(key, value\) pair"):
        kvcodec.encode("zstd", (torch.zeros(1, 2, 4, 8),))


def test_wrong_dtype():
    with pytest.raises(kvcodec.BadInputError, match="dtype.*torch.int32"):
        kvcodec.encode("zstd", ((torch.zeros(1, 2, 4, 8, dtype=torch.int32),) * 2,))
    with pytest.raises(kvcodec.BadInputError, match="float64"):
        kvcodec.encode("zstd", np.zeros((2, 2, 2, 4, 8)))
    with pytest.raises(kvcodec.BadInputError, match="list"):
        kvcodec.encode("zstd", [[[1.0]]])
    # layers that disagree
    k16 = torch.zeros(1, 2, 4, 8, dtype=torch.float16)
    with pytest.raises(kvcodec.BadInputError, match="layer 1 key"):
        kvcodec.encode("zstd", ((k16, k16), (k16.float(), k16.float())))
    with pytest.raises(kvcodec.BadInputError, match="layer 0 value"):
        kvcodec.encode("zstd", ((k16, torch.zeros(1, 2, 5, 8, dtype=torch.float16)),))


def test_non_contiguous_where_unsupported():
    # layers with different strides cannot share one view
    a = torch.zeros(1, 2, 16, 8)
    b = torch.zeros(1, 16, 2, 8).permute(0, 2, 1, 3)
    with pytest.raises(kvcodec.BadInputError, match="strides"):
        kvcodec.encode("zstd", ((a, a.clone()), (b, b.clone())))
    # overlapping memory (an expanded tensor) is refused by the view check
    e = torch.zeros(1, 1, 16, 8).expand(1, 2, 16, 8)
    with pytest.raises(kvcodec.BadInputError, match="strides"):
        kvcodec.encode("zstd", ((e, e.clone()),))
    # K and V of one layer in the same memory
    k = torch.zeros(1, 2, 16, 8)
    with pytest.raises(kvcodec.BadInputError, match="overlap"):
        kvcodec.encode("zstd", ((k, k),))


def test_device_tensors_are_refused_clearly():
    k = torch.empty(1, 2, 4, 8, device="meta")
    with pytest.raises(kvcodec.UnsupportedError, match="device 'meta'.*CUDA backend"):
        kvcodec.encode("zstd", ((k, k),))
    assert kvcodec.cuda_backend is False


def test_corrupt_and_truncated_bytes():
    pkv = rand_pkv(tokens=300)
    blob = kvcodec.encode("kivi:bits=4", pkv)
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0x55
    with pytest.raises(kvcodec.CorruptError):
        kvcodec.decode(bytes(bad))
    with pytest.raises(kvcodec.Error):
        kvcodec.decode(blob[: len(blob) - 10])
    with pytest.raises(kvcodec.Error):
        kvcodec.info(b"not a kvcodec container at all")
    with pytest.raises(kvcodec.Error):
        kvcodec.decode(b"")
    # every truncation and a sweep of bit flips: an exception, never a crash
    for n in range(0, len(blob), max(1, len(blob) // 97)):
        with pytest.raises(kvcodec.Error):
            kvcodec.decode(blob[:n])
    for i in range(0, len(blob), max(1, len(blob) // 61)):
        b = bytearray(blob)
        b[i] ^= 0x01
        try:
            kvcodec.decode(bytes(b))
        except kvcodec.Error:
            pass


def test_bad_destinations():
    pkv = rand_pkv(layers=2, heads=2, tokens=50, dim=8, dtype=torch.float32)
    blob = kvcodec.encode("zstd", pkv)
    with pytest.raises(kvcodec.BadInputError, match="shape"):
        kvcodec.decode_into(blob, rand_pkv(layers=2, heads=2, tokens=49, dim=8))
    ro = np.zeros((2, 2, 2, 50, 8), dtype=np.float32)
    ro.flags.writeable = False
    with pytest.raises(kvcodec.BadInputError, match="read-only"):
        kvcodec.decode_into(blob, ro)
    with pytest.raises(kvcodec.UsageError, match="token range"):
        kvcodec.decode(blob, token_begin=40, token_end=60)
    with pytest.raises(kvcodec.BadInputError, match="block_table"):
        kvcodec.encode("zstd", [torch.zeros(2, 4, 16, 2, 8)], block_table=[0, 9], num_tokens=20)
    with pytest.raises(kvcodec.BadInputError, match="block_table"):
        kvcodec.encode("zstd", [torch.zeros(2, 4, 16, 2, 8)], block_table=[1, 1], num_tokens=20)
    with pytest.raises(kvcodec.UsageError, match="kv_heads or head_dim"):
        kvcodec.encode("zstd", torch.zeros(2, 2, 16, 64))

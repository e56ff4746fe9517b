"""Streaming: kvcodec.Encoder writes pieces as segments are coded; kvcodec.Decoder decodes bytes as they arrive."""
import io

import pytest
import torch

import kvcodec
from conftest import assert_pkv_equal, rand_pkv


def test_encoder_streams_the_same_bytes():
    pkv = rand_pkv(layers=3, tokens=700, dtype=torch.bfloat16)
    enc = kvcodec.Encoder("kivi:bits=4", chunk_tokens=128)
    whole = enc.encode(pkv)
    assert enc.report["container_bytes"] == len(whole) and enc.report["segments"] == 3 * 6
    pieces = []
    rep = enc.encode_to(pkv, pieces.append)
    assert len(pieces) > 6 and b"".join(pieces) == whole and rep["container_bytes"] == len(whole)
    f = io.BytesIO()
    enc.encode_to(pkv, f)
    assert f.getvalue() == whole


def test_decoder_fed_in_pieces():
    pkv = rand_pkv(layers=2, tokens=700, dtype=torch.float16)
    blob = kvcodec.encode("zstd", pkv, chunk_tokens=100)
    d = kvcodec.Decoder()
    assert not d.header_ready and d.valid_tokens == 0
    seen = []
    for i in range(0, len(blob), 997):
        d.feed(blob[i:i + 997])
        seen.append(d.valid_tokens)
    assert d.header_ready and d.header["shape"]["tokens"] == 700
    assert seen == sorted(seen) and seen[0] < 700 and seen[-1] == 700
    out = d.finish()
    assert_pkv_equal(out, pkv)
    assert d.result["kept"] is None


def test_decoder_into_given_memory_and_range():
    pkv = rand_pkv(layers=2, tokens=500, dtype=torch.float32)
    blob = kvcodec.encode("zstd", pkv, chunk_tokens=64)
    dst = tuple((torch.zeros(1, 2, 200, 16), torch.zeros(1, 2, 200, 16)) for _ in range(2))
    d = kvcodec.Decoder(dst, token_begin=150, token_end=350)
    for i in range(0, len(blob), 4096):
        d.feed(memoryview(blob)[i:i + 4096])
    assert d.finish() is dst
    assert_pkv_equal(dst, tuple((k[:, :, 150:350], v[:, :, 150:350]) for k, v in pkv))


def test_decoder_reports_incomplete_and_corrupt_streams():
    pkv = rand_pkv(layers=2, tokens=500)
    blob = kvcodec.encode("zstd", pkv, chunk_tokens=100)
    d = kvcodec.Decoder()
    d.feed(blob[: len(blob) * 2 // 3])
    with pytest.raises(kvcodec.CorruptError):
        d.finish()
    assert 0 < d.valid_tokens < 500
    with pytest.raises(kvcodec.UsageError):
        d.feed(b"x")
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    with pytest.raises(kvcodec.CorruptError):
        kvcodec.Decoder().feed(bytes(bad)).finish()
    # a destination of the wrong shape is named when the header arrives
    with pytest.raises(kvcodec.BadInputError, match="shape"):
        kvcodec.Decoder(rand_pkv(layers=2, tokens=499)).feed(blob)


def test_errors_raised_in_python_while_streaming_come_out_as_themselves():
    pkv = rand_pkv(layers=2, tokens=300)
    blob = kvcodec.encode("zstd", pkv, chunk_tokens=100)
    # the destination is checked in Python when the header arrives (inside the library's push)
    bad = tuple((torch.zeros(1, 2, 300, 16, dtype=torch.int32),) * 2 for _ in range(2))
    with pytest.raises(kvcodec.BadInputError, match="int32"):
        kvcodec.Decoder(bad).feed(blob)

    class Stop(Exception):
        pass

    def stop(done, total):
        if done == 2:
            raise Stop("enough")

    d = kvcodec.Decoder(progress=stop)
    with pytest.raises(Stop, match="enough"):
        d.feed(blob)
    pieces = []

    def full_disk(b):
        if len(pieces) == 3:
            raise OSError(28, "No space left on device")
        pieces.append(b)

    with pytest.raises(OSError, match="No space"):
        kvcodec.Encoder("zstd", chunk_tokens=100).encode_to(pkv, full_disk)

"""Real KV dumps of real models (../shared/kv, skipped when absent) through the Python API."""
import os
import subprocess

import pytest
import torch

import kvcodec
from conftest import real_pkv, shared_kv_dir

KV = shared_kv_dir()
pytestmark = pytest.mark.skipif(KV is None, reason="../shared/kv (real KV dumps) is not here")


@pytest.mark.parametrize("name", ["kvlab-d0.safetensors", "kvlab-d0.bf16.safetensors", "stories260K-s0.safetensors"])
def test_real_dump_round_trip_and_eval(name):
    pkv, queries, meta = real_pkv(os.path.join(KV, name))
    blob = kvcodec.encode("kvc:level=5", pkv, metadata=meta)
    out = kvcodec.decode(blob)
    assert out[0][0].dtype == pkv[0][0].dtype
    for (k, v), (k2, v2) in zip(pkv, out):
        for a, b in ((k, k2), (v, v2)):
            assert (a.float() - b.float()).norm() / a.float().norm() < 0.2
    raw = sum(k.numel() + v.numel() for k, v in pkv) * 2
    assert len(blob) < raw / 3  # smaller than the cache in fp16
    assert kvcodec.decode(kvcodec.encode("zstd", pkv))[2][1].equal(pkv[2][1])
    r = kvcodec.eval("kvc:level=5", pkv, queries, repeats=1)
    # stories260K has head_dim 8: level 5 is coarser there
    assert r["attention"] is not None and r["attention"]["rel_error"] < (0.5 if name.startswith("stories") else 0.2)
    assert abs(r["bits_per_element"] - kvcodec.info(blob)["bits_per_element"]) < 1e-9


def test_same_bytes_as_the_cli_on_a_real_dump(tmp_path):
    cli = os.environ.get("KVCODEC_CLI")
    if not cli or not os.path.exists(cli):
        pytest.skip("KVCODEC_CLI (the built kvcodec command) not given; ctest sets it when the CLI is built")
    path = os.path.join(KV, "kvlab-d1.safetensors")
    pkv, queries, meta = real_pkv(path)
    from conftest import read_safetensors
    tokens = read_safetensors(path)[0]["tokens"]
    ours = kvcodec.encode("kivi:bits=2|rans", pkv, queries=queries, tokens=tokens, metadata=meta)
    out = tmp_path / "d1.kvc"
    subprocess.run([cli, "encode", "-q", "-c", "kivi:bits=2|rans", path, str(out)], check=True, timeout=300)
    assert out.read_bytes() == ours


def test_snapkv_press_on_a_real_dump():
    pkv, queries, _ = real_pkv(os.path.join(KV, "kvlab-d0.ctx256.safetensors"))
    p = kvcodec.press("snapkv:keep=0.25")(pkv, queries=queries)
    small = p.past_key_values
    assert small[0][0].shape[2] == pkv[0][0].shape[2] // 4


def test_kvc_target_on_a_real_dump():
    # kvc:target=KL picks the bins on the cache: with the queries, the attention KL that eval measures stays under it
    pkv, queries, meta = real_pkv(os.path.join(KV, "kvlab-d0.ctx256.safetensors"))
    rep = {}
    blob = kvcodec.encode("kvc:target=0.002", pkv, queries=queries, metadata=meta, report=rep)
    t = rep["target"]
    assert t["asked_kl"] == 0.002 and t["proxy"] is False and t["met"] is True
    assert "kbins=%d," % t["bins"] in kvcodec.info(blob)["codec"]
    r = kvcodec.eval(kvcodec.info(blob)["codec"], pkv, queries, repeats=1)
    assert 0.001 <= r["attention"]["kl"] <= 0.002
    # without queries proxy queries stand in, and the report says so
    rep2 = {}
    kvcodec.encode("kvc:target=0.002", pkv, report=rep2)
    assert rep2["target"]["proxy"] is True
    with pytest.raises(kvcodec.UsageError, match="not both"):
        kvcodec.encode("kvc:target=0.002,level=3", pkv)


def test_kvw_reads_the_queries_and_matches_the_cli(tmp_path):
    # kvw's key steps follow the queries given to encode; the CLI reads them from the dump: same bytes
    path = os.path.join(KV, "kvlab-d0.ctx256.safetensors")
    pkv, queries, meta = real_pkv(path)
    from conftest import read_safetensors
    tokens = read_safetensors(path)[0]["tokens"]
    with_q = kvcodec.encode("kvw", pkv, queries=queries, tokens=tokens, metadata=meta)
    without = kvcodec.encode("kvw", pkv, tokens=tokens, metadata=meta)
    assert with_q != without
    out = kvcodec.decode(with_q)
    for (k, v), (k2, v2) in zip(pkv, out):
        for a, b in ((k, k2), (v, v2)):
            assert (a.float() - b.float()).norm() / a.float().norm() < 0.2
    with pytest.raises(kvcodec.UsageError, match="derope"):
        kvcodec.encode("kvw", pkv)  # keys before RoPE need the rope metadata
    cli = os.environ.get("KVCODEC_CLI")
    if cli and os.path.exists(cli):
        f = tmp_path / "w.kvc"
        subprocess.run([cli, "encode", "-q", "-c", "kvw", path, str(f)], check=True, timeout=300)
        assert f.read_bytes() == with_q


def test_klt_profile_from_the_cli_codes_in_python_as_in_the_cli(tmp_path):
    # a KV profile fitted by `kvcodec calibrate --profile-out` on one dump, loaded in Python, codes
    # another dump to the same bytes as the CLI; a decoder without it names the profile it needs
    cli = os.environ.get("KVCODEC_CLI")
    model = os.path.join(KV, "..", "models", "stories260K", "stories260K.bin")
    if not cli or not os.path.exists(cli) or not os.path.exists(model):
        pytest.skip("needs the kvcodec CLI (KVCODEC_CLI) and ../shared/models")
    prof = tmp_path / "p.safetensors"
    subprocess.run([cli, "calibrate", "--model", model, "--context-tokens", "256", "--profile-out", str(prof),
                    os.path.join(KV, "stories260K-s1.safetensors")], check=True, timeout=300, stdout=subprocess.DEVNULL)
    path = os.path.join(KV, "stories260K-s0.safetensors")
    pkv, queries, meta = real_pkv(path)
    from conftest import read_safetensors
    tokens = read_safetensors(path)[0]["tokens"]
    kvcodec.unload_profiles()
    spec = "klt:kstep=0.3,vstep=0.4|rans"
    with pytest.raises(kvcodec.UsageError, match="exactly one profile"):
        kvcodec.encode(spec, pkv, queries=queries, tokens=tokens, metadata=meta)
    p = kvcodec.load_profile(prof)
    assert p["model"] == "stories260K" and p["layers"] == 5 and p["head_dim"] == 8 and len(p["hash"]) == 16
    blob = kvcodec.encode(spec, pkv, queries=queries, tokens=tokens, metadata=meta)
    out = kvcodec.decode(blob)
    for (k, v), (k2, v2) in zip(pkv, out):
        for a, b in ((k, k2), (v, v2)):
            assert (a.float() - b.float()).norm() / a.float().norm() < 0.3
    f = tmp_path / "k.kvc"
    subprocess.run([cli, "encode", "-q", "--profile", str(prof), "-c", spec, path, str(f)], check=True, timeout=300)
    assert f.read_bytes() == blob
    kvcodec.unload_profiles()
    with pytest.raises(kvcodec.Error, match=p["hash"]):
        kvcodec.decode(blob)

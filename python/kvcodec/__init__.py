"""kvcodec: compress LLM KV caches from Python (PyTorch tensors, numpy arrays, Hugging Face caches,
vLLM paged pools, LMCache chunks).

Everything here reads the caller's memory in place: a tensor's address, dtype and strides are handed to
the C++ library, which encodes from (and decodes into) that memory with the GIL released. No input is
copied; ``decode_into`` writes into the caller's tensors.

    import kvcodec
    blob = kvcodec.encode("kvc:level=5", past_key_values)       # bytes (a .kvc container)
    pkv = kvcodec.decode(blob)                                  # tuple of (key, value) [1, H, T, D]
    kvcodec.decode_into(blob, pkv)                              # into existing tensors
    st = kvcodec.Store("file:///tmp/kv", model="llama-3-8b")    # or redis://HOST:PORT, redis-cluster://...
    st.put(token_ids, pkv); n = st.get(token_ids, pkv)          # n tokens of the longest stored prefix decoded
"""

from __future__ import annotations

import json as _json

from . import _kvcodec as _C
from ._kvcodec import BadInputError, CorruptError, Error, IOError, UnsupportedError, UsageError  # noqa: A004

__version__ = _C.__version__
__all__ = [
    "encode", "decode", "decode_into", "info", "list_codecs", "load_profile", "unload_profiles", "eval", "Encoder", "Decoder", "press", "Press", "PressedCache",
    "LMCacheSerde", "lmcache_register", "Store", "Error", "BadInputError", "CorruptError", "UsageError", "UnsupportedError", "IOError",
]

# ---- tensors: address, dtype, shape and element strides, read in place ----------------------------

_TORCH_DT = {"torch.float32": "f32", "torch.float16": "f16", "torch.bfloat16": "bf16"}
_NUMPY_DT = {"float32": "f32", "float16": "f16"}


def _is_torch(t):
    return type(t).__module__.startswith("torch") and hasattr(t, "data_ptr") and hasattr(t, "stride")


def _is_numpy(t):
    return type(t).__name__ == "ndarray" and hasattr(t, "__array_interface__")


def _is_array(t):
    return _is_torch(t) or _is_numpy(t)


def _meta(t, what, writable=False):
    """(address, dtype, shape, element strides) of a CPU tensor or array, without touching its data."""
    if _is_torch(t):
        dev = t.device
        if dev.type != "cpu":
            raise UnsupportedError(
                f"{what}: the tensor is on device '{dev}', but this kvcodec module is built without the CUDA backend "
                f"(kvcodec.cuda_backend is False); it reads host memory only. Move the cache to the CPU (.cpu()) or "
                f"build kvcodec with CUDA.")
        if str(t.layout) != "torch.strided":
            raise BadInputError(f"{what}: expected a dense (strided) tensor, found layout {t.layout}")
        dt = _TORCH_DT.get(str(t.dtype))
        if dt is None:
            raise BadInputError(f"{what}: field 'dtype': expected float32, float16 or bfloat16, found {t.dtype}")
        return t.data_ptr(), dt, tuple(t.shape), tuple(t.stride())
    if _is_numpy(t):
        dt = _NUMPY_DT.get(str(t.dtype))
        if dt is None:
            raise BadInputError(f"{what}: field 'dtype': expected float32 or float16 (numpy has no bfloat16: use a torch tensor), "
                                f"found {t.dtype}")
        if writable and not t.flags.writeable:
            raise BadInputError(f"{what}: the numpy array is read-only; decoding writes into it")
        item = t.itemsize
        if any(s % item for s in t.strides):
            raise BadInputError(f"{what}: strides {t.strides} (bytes) are not multiples of the element size {item}")
        return t.__array_interface__["data"][0], dt, tuple(t.shape), tuple(s // item for s in t.strides)
    raise BadInputError(f"{what}: expected a torch.Tensor or numpy.ndarray, found {type(t).__module__}.{type(t).__qualname__}")


def _reach(shape, strides):
    """Elements addressed from the first one, exclusive (0 for an empty tensor)."""
    if any(n == 0 for n in shape):
        return 0
    return 1 + sum((n - 1) * s for n, s in zip(shape, strides))


def _norm(shape, strides):
    """Strides with those of size-1 dims zeroed (they never step), for comparing layouts."""
    return tuple(0 if n == 1 else s for n, s in zip(shape, strides))


_ES = {"f32": 4, "f16": 2, "bf16": 2}


class _Source:
    """A view description for the C++ side plus the objects whose memory it points into (kept alive)."""

    def __init__(self, desc, owners, layout):
        self.desc, self.owners, self.layout = desc, owners, layout

    @property
    def tokens(self):
        return self.desc["tokens"]


def _hf_pairs_view(pairs, what, writable, batch_index=None):
    pairs = list(pairs)
    if not pairs:
        raise BadInputError(f"{what}: expected at least one layer of (key, value), found none")
    ks, vs, owners = [], [], []
    first = None
    layout = None
    reach = 0
    for l, pair in enumerate(pairs):
        try:
            k, v = pair
        except (TypeError, ValueError):
            raise BadInputError(f"{what}: layer {l}: expected a (key, value) pair, found {type(pair).__qualname__}") from None
        for name, t, out in (("key", k, ks), ("value", v, vs)):
            where = f"{what}: layer {l} {name}"
            addr, dt, shape, strides = _meta(t, where, writable)
            if len(shape) == 4:
                if batch_index is not None:
                    if not 0 <= batch_index < shape[0]:
                        raise BadInputError(f"{where}: field 'batch_index': expected 0..{shape[0] - 1}, found {batch_index}")
                    addr += batch_index * strides[0] * _ES[dt]  # the sequence's rows, in place
                elif shape[0] != 1:
                    raise BadInputError(f"{where}: field 'batch': expected 1 (kvcodec codes one sequence: pass batch_index=i "
                                        f"to code sequence i of the batch), found {shape[0]} in shape {list(shape)}")
                shape, strides, lay = shape[1:], strides[1:], "hf_4d"
            elif len(shape) == 3:
                lay = "hf_3d"
            else:
                raise BadInputError(f"{where}: field 'rank': expected a [1, kv_heads, tokens, head_dim] or [kv_heads, tokens, head_dim] "
                                    f"tensor, found rank {len(shape)} (shape {list(shape)})")
            sig = (dt, shape, _norm(shape, strides))
            if first is None:
                first, layout, base_strides = sig, lay, strides
            elif sig[:2] != first[:2]:
                raise BadInputError(f"{where}: expected dtype {first[0]} and shape {list(first[1])} as layer 0 key, "
                                    f"found {dt} {list(shape)}")
            elif sig[2] != first[2]:
                raise BadInputError(f"{where}: expected the strides of layer 0 key {list(base_strides)}, found {list(strides)}; kvcodec "
                                    f"reads every layer with one set of strides: make the tensors alike (e.g. .contiguous())")
            reach = max(reach, _reach(shape, strides))
            out.append(addr)
            owners.append(t)
    dt, (H, T, D), _ = first
    s_head, s_token, s_dim = base_strides
    desc = dict(k=ks, v=vs, dtype=dt, kv_heads=H, tokens=T, head_dim=D, s_head=s_head, s_token=s_token, s_dim=s_dim, extent=reach)
    return _Source(desc, owners, layout)


def _stacked_view(t, what, writable):
    addr, dt, shape, st = _meta(t, what, writable)
    if len(shape) != 5 or shape[1] != 2:
        raise BadInputError(f"{what}: field 'shape': expected [layers, 2, kv_heads, tokens, head_dim], found {list(shape)}")
    L, _, H, T, D = shape
    es = _ES[dt]
    ks = [addr + l * st[0] * es for l in range(L)]
    vs = [addr + (l * st[0] + st[1]) * es for l in range(L)]
    desc = dict(k=ks, v=vs, dtype=dt, kv_heads=H, tokens=T, head_dim=D, s_head=st[2], s_token=st[3], s_dim=st[4],
                extent=_reach(shape[2:], st[2:]))
    return _Source(desc, [t], "stacked")


def _lmcache_view(t, kv_heads, head_dim, what, writable):
    """LMCache's KV chunk: [layers, 2, tokens, kv_heads * head_dim] (or [layers, 2, tokens, kv_heads, head_dim])."""
    addr, dt, shape, st = _meta(t, what, writable)
    if len(shape) == 5 and shape[1] == 2:
        L, _, T, H, D = shape
        if (kv_heads not in (None, H)) or (head_dim not in (None, D)):
            raise BadInputError(f"{what}: expected kv_heads {kv_heads} x head_dim {head_dim}, found {H} x {D} in shape {list(shape)}")
        s_token, s_head, s_dim = st[2], st[3], st[4]
    elif len(shape) == 4 and shape[1] == 2:
        L, _, T, HD = shape
        if kv_heads is None and head_dim is None:
            raise UsageError(f"{what}: one tensor of shape {list(shape)} is read as an LMCache chunk [layers, 2, tokens, "
                             f"kv_heads*head_dim], which needs kv_heads or head_dim (LMCacheSerde(spec, kv_heads=..., head_dim=...) "
                             f"or metadata with kv_shape); a Hugging Face cache is a tuple of (key, value) per layer")
        H = kv_heads if kv_heads is not None else HD // head_dim
        D = head_dim if head_dim is not None else HD // kv_heads
        if H * D != HD or H <= 0 or D <= 0:
            raise BadInputError(f"{what}: field 'shape': expected last dim kv_heads {H} x head_dim {D} = {H * D}, found {HD}")
        s_token, s_dim = st[2], st[3]
        s_head = D * s_dim
    else:
        raise BadInputError(f"{what}: field 'shape': expected an LMCache chunk [layers, 2, tokens, kv_heads*head_dim], found "
                            f"rank {len(shape)} shape {list(shape)}")
    es = _ES[dt]
    ks = [addr + l * st[0] * es for l in range(L)]
    vs = [addr + (l * st[0] + st[1]) * es for l in range(L)]
    desc = dict(k=ks, v=vs, dtype=dt, kv_heads=H, tokens=T, head_dim=D, s_head=s_head, s_token=s_token, s_dim=s_dim,
                extent=_reach((H, T, D), (s_head, s_token, s_dim)))
    return _Source(desc, [t], "hf_4d")


def _ints(x, what):
    if _is_torch(x):
        x = x.tolist()
    elif _is_numpy(x):
        x = x.tolist()
    try:
        return [int(i) for i in x]
    except TypeError:
        raise BadInputError(f"{what}: expected a sequence of ints, found {type(x).__qualname__}") from None


def _paged_view(layers, block_table, num_tokens, what, writable):
    """vLLM paged KV: per layer one [2, num_blocks, block_size, kv_heads, head_dim] tensor (or a (K, V) pair of
    [num_blocks, block_size, kv_heads, head_dim] pools) plus the sequence's block table."""
    layers = list(layers)
    if not layers:
        raise BadInputError(f"{what}: expected at least one layer, found none")
    table = _ints(block_table, f"{what}: block_table")
    ks, vs, owners = [], [], []
    first = None
    for l, x in enumerate(layers):
        where = f"{what}: layer {l}"
        if _is_array(x):
            addr, dt, shape, st = _meta(x, where, writable)
            if len(shape) != 5 or shape[0] != 2:
                raise BadInputError(f"{where}: field 'shape': expected vLLM's [2, num_blocks, block_size, kv_heads, head_dim], found "
                                    f"{list(shape)}")
            kaddr, vaddr = addr, addr + st[0] * _ES[dt]
            shape, st = shape[1:], st[1:]
            owners.append(x)
        else:
            try:
                kt, vt = x
            except (TypeError, ValueError):
                raise BadInputError(f"{where}: expected a [2, num_blocks, block_size, kv_heads, head_dim] tensor or a (K, V) pair of "
                                    f"pools, found {type(x).__qualname__}") from None
            kaddr, dt, shape, st = _meta(kt, where + " key", writable)
            vaddr, dt2, shape2, st2 = _meta(vt, where + " value", writable)
            if len(shape) != 4 or (dt2, shape2, st2) != (dt, shape, st):
                raise BadInputError(f"{where}: expected K and V pools of one dtype, shape [num_blocks, block_size, kv_heads, head_dim] "
                                    f"and strides, found {dt} {list(shape)} {list(st)} and {dt2} {list(shape2)} {list(st2)}")
            owners += [kt, vt]
        sig = (dt, shape, st)
        if first is None:
            first = sig
        elif sig != first:
            raise BadInputError(f"{where}: expected dtype {first[0]}, shape {list(first[1])} and strides {list(first[2])} as layer 0, "
                                f"found {dt} {list(shape)} {list(st)}")
        ks.append(kaddr)
        vs.append(vaddr)
    dt, (NB, BS, H, D), (s_block, s_token, s_head, s_dim) = first
    tokens = len(table) * BS if num_tokens is None else int(num_tokens)
    desc = dict(k=ks, v=vs, dtype=dt, kv_heads=H, tokens=tokens, head_dim=D, s_head=s_head, s_token=s_token, s_dim=s_dim,
                extent=_reach((NB, BS, H, D), (s_block, s_token, s_head, s_dim)), block_size=BS, s_block=s_block, num_blocks=NB,
                block_table=table)
    return _Source(desc, owners, "")


def _layers_of_cache_object(kv):
    """(key, value) pairs of a transformers Cache (DynamicCache and friends), by duck typing."""
    layers = getattr(kv, "layers", None)
    if layers is not None and not _is_array(layers):
        try:
            pairs = [(x.keys, x.values) for x in layers]
        except AttributeError:
            pairs = None
        if pairs is not None and all(k is not None and _is_array(k) for k, _ in pairs):
            return pairs
    kc, vc = getattr(kv, "key_cache", None), getattr(kv, "value_cache", None)
    if kc is not None and vc is not None:
        kc, vc = list(kc), list(vc)
        if len(kc) != len(vc):
            raise BadInputError(f"cache object: expected as many key_cache as value_cache tensors, found {len(kc)} and {len(vc)}")
        return list(zip(kc, vc))
    if hasattr(kv, "to_legacy_cache"):
        return list(kv.to_legacy_cache())
    return None


def _source(kv, *, writable=False, kv_heads=None, head_dim=None, block_table=None, num_tokens=None, batch_index=None, what="kv"):
    """The view of any supported cache form (see encode)."""
    if isinstance(kv, _Source):
        return kv
    if block_table is not None:
        return _paged_view(kv, block_table, num_tokens, what, writable)
    if _is_array(kv):
        rank = len(kv.shape)
        if rank == 5 and kv_heads is None and head_dim is None:
            return _stacked_view(kv, what, writable)
        if rank in (4, 5):
            return _lmcache_view(kv, kv_heads, head_dim, what, writable)
        raise BadInputError(f"{what}: field 'rank': expected a stacked [layers, 2, kv_heads, tokens, head_dim] tensor, an LMCache "
                            f"chunk [layers, 2, tokens, kv_heads*head_dim] (with kv_heads/head_dim), or a tuple of (key, value) per "
                            f"layer; found one tensor of shape {list(kv.shape)}")
    pairs = None if isinstance(kv, (list, tuple)) else _layers_of_cache_object(kv)
    if pairs is None:
        if not isinstance(kv, (list, tuple)):
            raise BadInputError(f"{what}: expected past_key_values (a tuple of (key, value) per layer), a DynamicCache-like object, "
                                f"a stacked tensor or an LMCache chunk, found {type(kv).__module__}.{type(kv).__qualname__}")
        pairs = kv
    return _hf_pairs_view(pairs, what, writable, batch_index)


def _queries(queries, src):
    """Queries per layer ([1, q_heads, T, D] / [q_heads, T, D] each, or one [layers, q_heads, T, D] tensor) as a description."""
    if queries is None:
        return None, []
    d = src.desc
    L, T, D = len(d["k"]), d["tokens"], d["head_dim"]
    if _is_array(queries):
        addr, dt, shape, st = _meta(queries, "queries")
        if len(shape) != 4 or shape[0] != L or shape[2] != T or shape[3] != D:
            raise BadInputError(f"queries: field 'shape': expected [{L}, q_heads, {T}, {D}], found {list(shape)}")
        es = _ES[dt]
        return dict(q=[addr + l * st[0] * es for l in range(L)], dtype=dt, q_heads=shape[1], s_head=st[1], s_token=st[2], s_dim=st[3]), [queries]
    queries = list(queries)
    if len(queries) != L:
        raise BadInputError(f"queries: field 'layers': expected {L}, found {len(queries)}")
    addrs, first = [], None
    for l, q in enumerate(queries):
        addr, dt, shape, st = _meta(q, f"queries layer {l}")
        if len(shape) == 4 and shape[0] == 1:
            shape, st = shape[1:], st[1:]
        if len(shape) != 3 or shape[1] != T or shape[2] != D:
            raise BadInputError(f"queries layer {l}: field 'shape': expected [1, q_heads, {T}, {D}], found {list(q.shape)}")
        if first is None:
            first = (dt, shape, st)
        elif (dt, shape, st) != first:
            raise BadInputError(f"queries layer {l}: expected dtype, shape and strides as layer 0 {first}, found {(dt, shape, st)}")
        addrs.append(addr)
    dt, shape, st = first
    return dict(q=addrs, dtype=dt, q_heads=shape[0], s_head=st[0], s_token=st[1], s_dim=st[2]), queries


# ---- the API ---------------------------------------------------------------------------------------

def _check_tokens(src, what):
    if src.tokens <= 0:
        raise BadInputError(f"{what}: field 'tokens': expected > 0, found {src.tokens} (an empty cache)")


def encode(spec, kv, *, chunk_tokens=256, threads=0, queries=None, tokens=None, positions=None, metadata=None,
           kv_heads=None, head_dim=None, block_table=None, num_tokens=None, batch_index=None, progress=None, layout=None, report=None):
    """Encodes a KV cache with codec `spec` (e.g. "kvc:level=5", "kivi:bits=2|rans", "raw:dtype=f16"; see list_codecs())
    and returns the .kvc container as bytes. The cache is read in place (no copy), with the GIL released.

    kv: Hugging Face past_key_values (a tuple of (key, value) per layer, [1, H, T, D] or [H, T, D]; [B, H, T, D] with
        batch_index=i codes sequence i in place), a DynamicCache-like
        object (key_cache/value_cache lists, or layers[i].keys/.values), one stacked [L, 2, H, T, D] tensor, an LMCache
        chunk [L, 2, T, H*D] (give kv_heads or head_dim), or vLLM paged pools (a list per layer of
        [2, num_blocks, block_size, H, D] tensors) with `block_table` (and `num_tokens`, default all blocks' slots).
        torch tensors (float32/float16/bfloat16, CPU) or numpy arrays (float32/float16).
    queries: per-layer queries for drop stages that score them (snapkv, ...). tokens/positions/metadata: stored in the
    container. progress(done, total): called as segments finish. report: a dict filled with the encode report.
    """
    src = _source(kv, kv_heads=kv_heads, head_dim=head_dim, block_table=block_table, num_tokens=num_tokens, batch_index=batch_index)
    _check_tokens(src, "encode input")
    qdesc, _qowners = _queries(queries, src)
    data, rep = _C.encode(spec, src.desc, chunk_tokens=chunk_tokens, threads=threads, layout=src.layout if layout is None else layout,
                          metadata=metadata, tokens=None if tokens is None else _ints(tokens, "tokens"),
                          positions=None if positions is None else _ints(positions, "positions"), queries=qdesc, progress=progress)
    if report is not None:
        report.update(rep)
    return data


def info(data, verify=False):
    """The container's header (codec, shape, dtype, layout, metadata...), sizes and segment table, as a dict.
    verify=True also checks every checksum."""
    return _C.info(data, verify)


def _torch_dtype(name):
    import torch
    return {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[name]


def _dtype_name(dtype):
    if dtype is None:
        return None
    s = str(dtype).replace("torch.", "")
    m = {"float32": "f32", "float": "f32", "f32": "f32", "float16": "f16", "half": "f16", "f16": "f16", "bfloat16": "bf16", "bf16": "bf16"}
    if s not in m:
        raise UsageError(f"dtype: expected float32, float16 or bfloat16, found {dtype}")
    return m[s]


def _alloc_hf(header, token_begin, token_end, dtype):
    """A new past_key_values for a container's range: one [L, 2, 1, H, T, D] buffer, a (key, value) view pair per layer."""
    import torch
    s = header["shape"]
    te = s["tokens"] if token_end is None or token_end < 0 else token_end
    name = _dtype_name(dtype) or (header["dtype"] if header["dtype"] in ("f32", "f16", "bf16") else "f32")
    buf = torch.empty((s["layers"], 2, 1, s["kv_heads"], max(te - token_begin, 0), s["head_dim"]), dtype=_torch_dtype(name))
    return tuple((buf[l, 0], buf[l, 1]) for l in range(s["layers"]))


def decode(data, out=None, *, token_begin=0, token_end=None, dtype=None, threads=0, progress=None, with_kept=False):
    """Decodes a container (bytes-like, read in place). Without `out`: returns a new past_key_values, a tuple of (key, value)
    torch tensors [1, H, T, D] per layer in the container's source dtype (or `dtype`). With `out` (any form encode
    accepts): decodes into it and returns it. token_begin/token_end: decode only that token range.
    with_kept=True returns (kv, kept) where kept lists, per layer and head, the tokens a drop stage kept (None if dense)."""
    if out is None:
        out = _alloc_hf(_C.info(data), token_begin, token_end, dtype)
    res = decode_into(data, out, token_begin=token_begin, token_end=token_end, threads=threads, progress=progress)
    return (out, res["kept"]) if with_kept else out


def decode_into(data, kv, *, token_begin=0, token_end=None, threads=0, progress=None, kv_heads=None, head_dim=None, block_table=None,
                num_tokens=None, batch_index=None):
    """Decodes a container into existing memory (any form encode accepts, writable, token_end - token_begin tokens):
    the tensors are written in place. Returns {"token_begin", "token_end", "kept"}."""
    src = _source(kv, writable=True, kv_heads=kv_heads, head_dim=head_dim, block_table=block_table, num_tokens=num_tokens,
                  batch_index=batch_index, what="decode destination")
    return _C.decode_into(data, src.desc, token_begin=token_begin, token_end=-1 if token_end is None else token_end, threads=threads,
                          progress=progress)


def load_profile(path):
    """Loads a model's KV profile (the per-head transforms of the `klt` codec, written by
    `kvcodec calibrate --model M --context-tokens C DUMP... --profile-out PATH`) into this process, where
    encode ("klt:..." with profile=auto uses the only one loaded, or profile=<hash>) and decode (a container
    records the hash of the profile it was coded with) find it. Returns its hash, model and shape."""
    return _C.load_profile(str(path))


def unload_profiles():
    """Forgets every loaded KV profile."""
    _C.unload_profiles()


def list_codecs():
    """Every stage and preset: [{"name", "kind", "summary", "params": [{"key", "default", "help"}]}]."""
    return _C.list_codecs()


def eval(spec, kv, queries=None, *, chunk_tokens=256, threads=0, repeats=0, **layout):  # noqa: A001
    """One codec on one cache, as `kvcodec eval --json` reports it: bits_per_element, ratio_vs_fp16, encode/decode MB/s,
    K/V fidelity, and attention fidelity when queries are given."""
    src = _source(kv, **layout)
    _check_tokens(src, "eval input")
    qdesc, _qowners = _queries(queries, src)
    return _C.eval(spec, src.desc, qdesc, chunk_tokens=chunk_tokens, threads=threads, repeats=repeats)


# ---- streaming -------------------------------------------------------------------------------------

class Encoder:
    """A configured encoder. encode(kv) returns bytes; encode_to(kv, sink) streams the container into `sink` (a callable
    taking bytes, or an object with .write) piece by piece as segments are coded, holding no copy of the container."""

    def __init__(self, spec, *, chunk_tokens=256, threads=0, progress=None):
        self.spec = _C.canonical_spec(spec)  # a bad spec fails here, with the library's message
        self.requested = spec
        self.chunk_tokens, self.threads, self.progress = chunk_tokens, threads, progress
        self.report = None

    def encode(self, kv, **kw):
        rep = {}
        data = encode(self.requested, kv, chunk_tokens=self.chunk_tokens, threads=self.threads, progress=self.progress, report=rep, **kw)
        self.report = rep
        return data

    def encode_to(self, kv, sink, *, queries=None, tokens=None, positions=None, metadata=None, **layout):
        write = sink if callable(sink) else getattr(sink, "write", None)
        if write is None:
            raise UsageError(f"Encoder.encode_to: sink must be callable or have .write, found {type(sink).__qualname__}")
        src = _source(kv, **layout)
        _check_tokens(src, "encode input")
        qdesc, _qowners = _queries(queries, src)
        _, rep = _C.encode(self.requested, src.desc, chunk_tokens=self.chunk_tokens, threads=self.threads, layout=src.layout,
                           metadata=metadata, tokens=None if tokens is None else _ints(tokens, "tokens"),
                           positions=None if positions is None else _ints(positions, "positions"), queries=qdesc,
                           progress=self.progress, write=write)
        self.report = rep
        return rep


class Decoder:
    """Decodes a container that arrives in pieces: feed(bytes) as they come; every segment they complete is checked and
    decoded at once. Memory holds the header, stage state and one incomplete record. `out` is the destination (any
    writable form encode accepts), or None to allocate a past_key_values when the header arrives.
    valid_tokens: tokens [0, n) of the destination that hold decoded data for every layer so far."""

    def __init__(self, out=None, *, token_begin=0, token_end=None, dtype=None, progress=None, **layout):
        self._out, self._src = out, None
        self._layout, self._dtype = layout, dtype
        self._tb, self._te = token_begin, token_end
        self._dec = _C.StreamDecoder(self._make, token_begin, -1 if token_end is None else token_end, progress)
        self.result = None

    def _make(self, header):
        if self._out is None:
            self._out = _alloc_hf(header, self._tb, self._te, self._dtype)
        self._src = _source(self._out, writable=True, what="decode destination", **self._layout)
        return self._src.desc

    def feed(self, data):
        self._dec.push(data)
        return self

    push = feed

    def finish(self):
        """Declares the end of input (CorruptError if the container is incomplete) and returns the destination."""
        self.result = self._dec.finish()
        return self._out

    @property
    def header_ready(self):
        return self._dec.header_ready

    @property
    def header(self):
        return self._dec.header

    @property
    def valid_tokens(self):
        return self._dec.valid_tokens

    @property
    def kv(self):
        return self._out


# ---- kvpress-style presses ---------------------------------------------------------------------------

class PressedCache:
    """A compressed past_key_values: the tokens a drop stage kept, per layer and head (ragged when the method is),
    with their (decoded) K/V. `data` is the container; `nbytes` its size."""

    def __init__(self, data, decoded, kept, tokens):
        import torch
        self.data, self.tokens = data, tokens
        self.kept, self.keys, self.values = [], [], []
        for l, (k, v) in enumerate(decoded):
            H = k.shape[1]
            idx = [torch.arange(tokens) for _ in range(H)] if kept is None else [torch.tensor(kept[l][h], dtype=torch.long) for h in range(H)]
            self.kept.append(idx)
            self.keys.append([k[0, h].index_select(0, idx[h]) for h in range(H)])
            self.values.append([v[0, h].index_select(0, idx[h]) for h in range(H)])

    @property
    def nbytes(self):
        return len(self.data)

    def kept_tokens(self):
        """Kept (token, head) rows over all layers."""
        return sum(len(i) for layer in self.kept for i in layer)

    def uniform(self):
        """True when every head of each layer kept the same number of tokens (past_key_values is then rectangular)."""
        return all(len({len(i) for i in layer}) == 1 for layer in self.kept)

    @property
    def past_key_values(self):
        """A tuple of (key, value) [1, H, T_l, D] per layer; UsageError when the press kept a ragged number per head
        (use .keys/.values/.kept then)."""
        import torch
        out = []
        for l, (ks, vs) in enumerate(zip(self.keys, self.values)):
            if len({k.shape[0] for k in ks}) != 1:
                raise UsageError(f"press: layer {l} kept {[k.shape[0] for k in ks]} tokens per head (ragged): "
                                 f"past_key_values cannot hold it; read .keys/.values/.kept")
            out.append((torch.stack(ks).unsqueeze(0), torch.stack(vs).unsqueeze(0)))
        return tuple(out)


class Press:
    """kvpress-style entry point: press(past_key_values, queries=None) -> PressedCache. The spec's drop stage chooses the
    tokens (snapkv & co. score `queries`), its quantizer/entropy stages code them; the result is really smaller: only the
    kept rows, per head."""

    def __init__(self, spec, *, chunk_tokens=256, threads=0):
        self.spec = _C.canonical_spec(spec)
        self.requested, self.chunk_tokens, self.threads = spec, chunk_tokens, threads

    def __call__(self, past_key_values, queries=None, **kw):
        src = _source(past_key_values, **kw)
        data = encode(self.requested, src, queries=queries, chunk_tokens=self.chunk_tokens, threads=self.threads)
        decoded, kept = decode(data, threads=self.threads, with_kept=True)
        return PressedCache(data, decoded, kept, src.tokens)

    compress = __call__


def press(spec, **kw):
    """A Press for `spec`, e.g. kvcodec.press("snapkv:ratio=0.5") or "knorm:ratio=0.3|kivi:bits=4"."""
    return Press(spec, **kw)


# ---- LMCache ---------------------------------------------------------------------------------------

class LMCacheSerde:
    """LMCache serializer/deserializer (the to_bytes(tensor) -> bytes / from_bytes(bytes) -> tensor interface of
    lmcache.storage_backend.serde) for LMCache's KV chunk [layers, 2, tokens, kv_heads * head_dim], coded with a kvcodec
    spec. kv_heads/head_dim come from the arguments or LMCache's engine metadata (kv_shape = (layers, 2, chunk_size,
    kv_heads, head_dim)); from_bytes reads them from the container. The bytes are those `kvcodec encode -c SPEC` writes
    for the same cache stored as a Hugging Face dump."""

    def __init__(self, spec, kv_heads=None, head_dim=None, *, metadata=None, chunk_tokens=256, threads=0, dtype=None):
        if metadata is not None and kv_heads is None and head_dim is None:
            shape = tuple(getattr(metadata, "kv_shape"))
            kv_heads, head_dim = int(shape[3]), int(shape[4])
            if dtype is None:
                dtype = getattr(metadata, "kv_dtype", None)
        self.spec = _C.canonical_spec(spec)
        self.requested, self.kv_heads, self.head_dim = spec, kv_heads, head_dim
        self.chunk_tokens, self.threads, self.dtype = chunk_tokens, threads, dtype

    def to_bytes(self, t):
        return encode(self.requested, t, kv_heads=self.kv_heads, head_dim=self.head_dim, chunk_tokens=self.chunk_tokens,
                      threads=self.threads)

    def from_bytes(self, b):
        import torch
        h = _C.info(b)
        s = h["shape"]
        name = _dtype_name(self.dtype) or (h["dtype"] if h["dtype"] in ("f32", "f16", "bf16") else "f32")
        out = torch.empty((s["layers"], 2, s["tokens"], s["kv_heads"] * s["head_dim"]), dtype=_torch_dtype(name))
        decode_into(b, out, kv_heads=s["kv_heads"], head_dim=s["head_dim"], threads=self.threads)
        return out


def lmcache_register(spec, name="kvcodec"):
    """Makes LMCache's serde factory (lmcache.storage_backend.serde.CreateSerde) answer `remote_serde: "<name>"` with
    LMCacheSerde(spec, metadata=<engine metadata>) for both directions; other names go to LMCache's own serdes.
    Call it before LMCache builds its engine. Returns the patched module."""
    import importlib
    mod = importlib.import_module("lmcache.storage_backend.serde")
    original = mod.CreateSerde

    def create_serde(serde_type, config, metadata):
        if serde_type == name:
            s = LMCacheSerde(spec, metadata=metadata)
            return s, s
        return original(serde_type, config, metadata)

    create_serde.__wrapped__ = original
    mod.CreateSerde = create_serde
    return mod


# ---- the KV store (include/kvcodec/store, docs/STORE.md) ------------------------------------------

class Store:
    """Compressed KV caches keyed by token prefixes (LMCache's chain-hash scheme) in a local directory or Redis:
    Store("file://DIR" | "redis://HOST:PORT[?OPTS]" | "redis-cluster://HOST:PORT,...", model="NAME").
    A context is stored as chunks of `chunk_tokens` tokens, each an independently decodable container; get() finds
    the longest stored prefix of the tokens asked for and decodes it into the caller's tensors in place. The model's
    name, the cache's shape, the chunk size and the spec are part of the key space: another model is never served.
    Caches are given in any form encode accepts (layout keywords kv_heads, head_dim, block_table, num_tokens,
    batch_index as there). The C++ kvcodec::store does the work, with the GIL released; errors are this module's
    (UsageError for a bad URL, IOError for an unreachable server, BadInputError for a cache that does not fit).

    A tiered store, Store("tiered://mem:64MB,file:///dir:1GB,redis://h:p", model=...) (docs/STORE.md), keeps each
    context whole in one tier: put() lets the planner choose the kvc level (spec "auto", the default there; or
    profile=[(spec, bytes, kl, decode_s), ...] measured by the caller) and the tier, get() serves from the fastest
    tier holding the prefix and promotes on hit, full tiers move contexts down by utility per byte. last_get also
    has "tier", "promoted_to", "level"; stats() has "tiers" (per tier counters); close() moves what the memory tier
    holds down to the first persistent tier (the memory tier dies with the process). alpha: the planner's delay
    weight (KL units per second of expected loading delay)."""

    def __init__(self, url, *, model, spec=None, chunk_tokens=256, threads=0, pipeline_depth=2, alpha=1.0):
        if not isinstance(model, str) or not model:
            raise UsageError(f"Store: model: expected the model's name (part of the key space), found {model!r}")
        if not isinstance(url, str):
            raise UsageError(f"Store: url: expected a string file://DIR, redis://HOST:PORT or redis-cluster://..., found {url!r}")
        tiered = url.startswith("tiered://")
        if spec is None:
            spec = "auto" if tiered else "kvc:level=5"
        # a bad spec fails here, with the library's message ("auto": the tiered store's planner chooses)
        self.spec = spec if (tiered and spec == "auto") else _C.canonical_spec(spec)
        self._st = _C.Store(url, model, chunk_tokens=chunk_tokens, threads=threads, pipeline_depth=pipeline_depth, alpha=alpha)
        self.last_get = None

    url = property(lambda self: self._st.url)
    model = property(lambda self: self._st.model)
    chunk_tokens = property(lambda self: self._st.chunk_tokens)

    def put(self, tokens, kv, *, spec=None, profile=None, weight=1.0, **layout):
        """Stores the KV of `tokens` (token i's KV is row i of the cache), coded with `spec` (default: the Store's). Chunks
        already stored (a shared prefix) are skipped. Returns {"spec", "entry_key", "tokens", "chunks", "chunks_written",
        "chunks_present", "bytes_written", "seconds"} (tiered stores add "level", "tier", "planned_tier", "utility",
        "already"). profile= and weight= (expected uses) are for tiered stores."""
        src = _source(kv, what="store put input", **layout)
        _check_tokens(src, "store put input")
        spec = self.spec if spec is None else spec
        if profile is not None or weight != 1.0:
            prof = None if profile is None else [(str(p[0]), float(p[1]), float(p[2]), float(p[3])) for p in profile]
            return self._st.put_tiered(_ints(tokens, "store put: tokens"), src.desc, spec, prof, float(weight))
        return self._st.put(_ints(tokens, "store put: tokens"), src.desc, spec)

    tiered = property(lambda self: self._st.tiered)

    def close(self):
        """Tiered stores: moves the contexts the memory tier holds down to the first persistent tier (returns how many);
        other stores: nothing to do (0)."""
        return self._st.close()

    def get(self, tokens, out, **layout):
        """Decodes the longest stored prefix of `tokens` into `out` (writable, any form encode accepts, len(tokens)
        tokens) and returns how many tokens it served: rows [0, n) of `out` hold them (0 on a miss; the other rows are
        unspecified). self.last_get holds the details: chunks, spec, bytes, fetch/decode seconds and `problems`
        (chunks found damaged or missing: the served prefix stops before them)."""
        src = _source(out, writable=True, what="store get destination", **layout)
        self.last_get = self._st.get(_ints(tokens, "store get: tokens"), src.desc)
        return self.last_get["tokens"]

    def _shape(self, shape_or_kv, layout):
        if isinstance(shape_or_kv, tuple) and len(shape_or_kv) == 3 and all(isinstance(x, int) for x in shape_or_kv):
            return shape_or_kv
        d = _source(shape_or_kv, **layout).desc
        return len(d["k"]), d["kv_heads"], d["head_dim"]

    def contains(self, tokens, shape_or_kv, **layout):
        """Tokens of the longest stored prefix of `tokens` (0 if none), from the markers alone. The second argument is a
        cache of the model's shape (any form) or a (layers, kv_heads, head_dim) tuple."""
        L, H, D = self._shape(shape_or_kv, layout)
        return self._st.contains(_ints(tokens, "store contains: tokens"), L, H, D)[0]

    def remove(self, tokens=None, shape_or_kv=None, *, key=None, **layout):
        """Removes the context of `tokens` (every spec it is stored with; contexts sharing its chunks lose them too), or the
        entry under `key` (see entries()). Returns the number of keys removed."""
        if key is not None:
            return self._st.remove_entry(key)
        if tokens is None or shape_or_kv is None:
            raise UsageError("Store.remove: give the tokens and the cache (or its (layers, kv_heads, head_dim)), or key=")
        L, H, D = self._shape(shape_or_kv, layout)
        return self._st.remove(_ints(tokens, "store remove: tokens"), L, H, D)

    def entries(self, all=False):  # noqa: A002
        """Stored contexts (every prefix marker when all=True): dicts with key, model, spec, tokens, chunks, chunk_tokens,
        layers, kv_heads, head_dim, chunk_keys, bytes, final."""
        return self._st.entries(all)

    def entry(self, key):
        """The entry under `key`, or None."""
        return self._st.entry(key)

    def stats(self):
        """This Store object's counters: puts, chunks_written, chunks_skipped, bytes_written, gets, hits, misses,
        tokens_served, chunks_read, bytes_read, rejected_chunks."""
        return self._st.stats()

    def __repr__(self):
        return f"kvcodec.Store({self.url!r}, model={self.model!r}, spec={self.spec!r}, chunk_tokens={self.chunk_tokens})"


cuda_backend = _C.cuda_backend

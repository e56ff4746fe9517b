"""kvcodec from Python: compress a Hugging Face past_key_values, decode it back, stream it, press it.

Run: PYTHONPATH=build/python /usr/bin/python3 examples/python/quickstart.py   (ctest runs it as python.example_quickstart)
"""
import torch

import kvcodec

# A past_key_values as transformers returns it: a (key, value) pair per layer, [batch=1, kv_heads, tokens, head_dim].
layers, kv_heads, tokens, head_dim = 4, 8, 1024, 64
g = torch.Generator().manual_seed(0)
pkv = tuple((torch.randn(1, kv_heads, tokens, head_dim, generator=g).half(),
             torch.randn(1, kv_heads, tokens, head_dim, generator=g).half()) for _ in range(layers))
fp16_bytes = sum(k.numel() + v.numel() for k, v in pkv) * 2

# 1. Encode (reads the tensors in place, GIL released) and decode to new tensors.
blob = kvcodec.encode("kvc:level=5", pkv)
back = kvcodec.decode(blob)
err = max(((a.float() - b.float()).norm() / a.float().norm()).item() for (a, _), (b, _) in zip(pkv, back))
print(f"kvc:level=5   {len(blob)} bytes for {fp16_bytes} fp16 bytes ({fp16_bytes / len(blob):.2f}x), worst layer rel. error {err:.4f}")
assert back[0][0].shape == pkv[0][0].shape and err < 0.2

# 2. Into existing memory, only tokens 256..512 (token-range decode).
part = tuple((torch.empty(1, kv_heads, 256, head_dim, dtype=torch.float16), torch.empty(1, kv_heads, 256, head_dim, dtype=torch.float16))
             for _ in range(layers))
kvcodec.decode_into(blob, part, token_begin=256, token_end=512)
assert torch.equal(part[0][0], back[0][0][:, :, 256:512])

# 3. Streaming: the encoder hands pieces to a callable as segments are coded; the decoder takes them as they arrive.
pieces = []
kvcodec.Encoder("kivi:bits=2|rans").encode_to(pkv, pieces.append)
dec = kvcodec.Decoder()
for p in pieces:
    dec.feed(p)
streamed = dec.finish()
print(f"kivi:bits=2|rans streamed in {len(pieces)} pieces, {sum(map(len, pieces))} bytes; valid tokens {dec.valid_tokens}")
assert dec.valid_tokens == tokens

# 4. What it costs and how faithful it is, as `kvcodec eval` reports it.
r = kvcodec.eval("kvc:level=5", pkv, repeats=1)
print(f"eval: {r['bits_per_element']:.3f} bits/element, key rel. error {r['key']['rel_fro_error']:.4f}, "
      f"encode {r['encode_mb_s']:.0f} MB/s, decode {r['decode_mb_s']:.0f} MB/s")

# 5. kvpress-style: keep a quarter of the tokens per head (knorm needs no queries; snapkv & co. take queries=...).
pressed = kvcodec.press("knorm:keep=0.25")(pkv)
small = pressed.past_key_values
print(f"knorm:keep=0.25 -> {tuple(small[0][0].shape)} per layer, container {pressed.nbytes} bytes")
assert small[0][0].shape[2] == tokens // 4

# 6. LMCache's chunk layout [layers, 2, tokens, kv_heads*head_dim] through the serde adapter.
chunk = torch.stack([torch.stack([k[0].transpose(0, 1).reshape(tokens, -1), v[0].transpose(0, 1).reshape(tokens, -1)]) for k, v in pkv])
serde = kvcodec.LMCacheSerde("kvc:level=5", kv_heads=kv_heads, head_dim=head_dim)
b = serde.to_bytes(chunk)
assert serde.from_bytes(b).shape == chunk.shape
print(f"LMCacheSerde: chunk {tuple(chunk.shape)} -> {len(b)} bytes")

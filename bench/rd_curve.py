#!/usr/bin/python3
"""Rate-distortion curves of every codec family on the real KV dumps, with the model in the loop (issue 13).

For every dump and spec, `kvcodec eval --model M --context-tokens C --json -j 1 --repeats 1` encodes tokens
[0, C) of the dump (the stored context of the prefix-reuse protocol), decodes it, and scores positions [C, T)
with the model: bits/element of the context (`model.context_bits_per_element`), KL(full || lossy) of the
next-token distributions (`model.kl`, nats, mean over the scored positions) and top-1 agreement.
`rd_entropy` (bench/rd_entropy.cpp) gives the idealised CacheGen of the same context: CacheGen's quantizer
(the `cachegen` preset's cachegen-quant) with its symbols at their per-(layer, K/V, channel, chunk) empirical
entropy + its f16 scales + CacheGen's 33 x u16 CDF table per context; its model KL is the `cachegen`
preset's (same reconstruction). Every ratio is bits / the idealised CacheGen's bits on the same dump.

Writes OUT/rd_curve.md (tables), OUT/rd_curve.svg (bits vs KL on a log axis and bits vs top-1, one column
per model) and OUT/rd_curve.json (every number). Default OUT = bench/results.

Usage: bench/rd_curve.py [--kvcodec BIN] [--rd-entropy BIN] [--shared DIR] [--dumps NAME,...]
                         [--spec SPEC ...] [--no-default-specs] [--out DIR] [--context-tokens C] [--chunk N]
       bench/rd_curve.py --replot OUT/rd_curve.json [--out DIR]   (re-render the outputs, no measuring)
Exit status: 2 on bad arguments or a missing input (the message names it); when a tool fails, its exit status
(kvcodec: 1 usage, e.g. a bad spec; 2 bad input; 3 internal) and its message; nothing is written then.
"""
import argparse
import atexit
import datetime
import json
import math
import os
import shlex
import shutil
import tempfile
import subprocess
import sys
import xml.sax.saxutils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DUMPS = ["stories260K-s0", "stories260K-s1", "stories260K-s2", "kvlab-d0", "kvlab-d1", "kvlab-d2"]
MODELS = {"stories260K": "models/stories260K/stories260K.bin", "kvlab": "models/kvlab/kvlab.bin"}
IDEAL = "idealised CacheGen"


def default_specs():
    s = ["kvc:level=%d" % l for l in range(1, 10)]
    s += ["kvc:level=%d,values=channel" % l for l in range(3, 10)]
    # kvw's two steps span a grid; the sweep table reads its Pareto frontier
    s += ["kvw:kstep=%g,vstep=%g" % (k, v) for k in (0.1, 0.15, 0.2, 0.25, 0.3) for v in (0.2, 0.3, 0.5, 0.8, 1.0)]
    s += ["cachegen"] + ["cachegen-paper:level=%d" % l for l in (1, 2, 3)]
    s += ["kivi:bits=2|rans", "kivi:bits=4|rans", "kivi:bits=2,residual=0|rans", "kivi:bits=4,residual=0|rans"]
    s += ["fp8", "fp8:format=e5m2", "fp8|rans", "uniform:bits=8", "uniform:bits=8|rans", "uniform:bits=4|rans"]
    s += ["q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl", "nf4", "raw:dtype=f16"]
    return s


def family(spec, extra):
    """Plot family of a spec; families in LINE_FAMILIES are rate sweeps drawn as lines, the others as points."""
    first = spec.split("|")[0].split(":")[0]
    if extra:
        return "+" + first
    if first in ("q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "iq4_nl"):
        return "llama.cpp"
    if first == "uniform":
        return "int (uniform)"
    if first == "kivi":
        return "kivi residual=0" if "residual=0" in spec else "kivi"
    if first == "kvc" and "values=channel" in spec:
        return "kvc values=channel"
    if first == "kvw" and "klayer=" in spec:
        return "kvw calibrated"
    if first == "klt":
        return "klt calibrated"
    return first


KLT_RANS = "rans:lanes=0,tables=shared,ctx=auto,model=auto,prob_bits=10"
LINE_FAMILIES = ("kvc", "kvc values=channel", "cachegen-paper", "kivi", "kivi residual=0")


def fail(code, msg):
    print("rd_curve: " + msg, file=sys.stderr)
    sys.exit(code)


def run_json(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        fail(p.returncode if p.returncode in (1, 2, 3) else 1, "%s failed (exit %d): %s" % (shlex.join(cmd), p.returncode, p.stderr.strip()))
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError as e:
        fail(1, "%s printed no JSON (%s)" % (shlex.join(cmd), e))


def model_of(name):
    for m in MODELS:
        if name.startswith(m):
            return m
    return None


def md_cell(spec):
    return "`" + spec.replace("|", "\\|") + "`"


def fmt_kl(v):
    return "%.3g" % v


# ---- SVG ------------------------------------------------------------------------------------------

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f", "#393b79", "#637939", "#843c39", "#7b4173"]
MARKS = ["circle", "square", "triangle"]


def marker(kind, x, y, color, r=3.2):
    if kind == "circle":
        return '<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>' % (x, y, r, color)
    if kind == "square":
        return '<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>' % (x - r, y - r, 2 * r, 2 * r, color)
    if kind == "triangle":
        return '<path d="M%.1f %.1fL%.1f %.1fL%.1f %.1fZ" fill="%s"/>' % (x, y - r * 1.2, x - r * 1.1, y + r * 0.9, x + r * 1.1, y + r * 0.9, color)
    # star (the idealised CacheGen)
    pts = []
    for i in range(10):
        a = math.pi / 2 + i * math.pi / 5
        rr = r * 2.0 if i % 2 == 0 else r * 0.8
        pts.append("%.1f,%.1f" % (x + rr * math.cos(a), y - rr * math.sin(a)))
    return '<polygon points="%s" fill="%s" stroke="white" stroke-width="0.6"/>' % (" ".join(pts), color)


def write_svg(path, rows, ideals, families, dumps, title):
    esc = xml.sax.saxutils.escape
    models = [m for m in MODELS if any(model_of(d) == m for d in dumps)]
    W, H = 560, 330  # one panel
    ml, mr, mt, mb = 62, 16, 34, 50
    legend_h = 22 + 16 * ((len(families) + 1 + 3) // 4)
    width, height = W * len(models), H * 2 + legend_h + 30
    color = {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(families)}
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">'
           % (width, height, width, height), '<rect width="100%" height="100%" fill="white"/>',
           '<text x="%d" y="18" font-size="14" text-anchor="middle">%s</text>' % (width // 2, esc(title))]
    for col, m in enumerate(models):
        mdumps = [d for d in dumps if model_of(d) == m]
        pts = [r for r in rows if r["dump"] in mdumps]
        ids = [ideals[d] for d in mdumps]
        # x axis up to twice the largest ideal (the region the bar is about); farther points are listed, not drawn
        xmax = min(max([r["bits"] for r in pts] + [i["ideal_bpe"] for i in ids]), 2.0 * max(i["ideal_bpe"] for i in ids)) * 1.05
        far = sorted(set(r["spec"] for r in pts if r["bits"] > xmax))
        pts = [r for r in pts if r["bits"] <= xmax]
        kls = [r["kl"] for r in pts if r["kl"] > 0] + [i["kl"] for i in ids if i["kl"] > 0]
        lo = math.floor(math.log10(min(kls))) if kls else -8
        hi = math.ceil(math.log10(max(kls))) if kls else 0
        if hi <= lo:
            hi = lo + 1
        t1 = [r["top1"] for r in pts] + [i["top1"] for i in ids]
        ylo1 = math.floor(min(t1) * 20) / 20 if t1 else 0.0
        ylo1 = min(ylo1, 0.95)
        for row in range(2):
            ox, oy = col * W, 26 + row * H
            pw, ph = W - ml - mr, H - mt - mb
            X = lambda v: ox + ml + pw * (v / xmax)
            if row == 0:
                Y = lambda v: oy + mt + ph * (1 - (math.log10(max(v, 10.0 ** lo)) - lo) / (hi - lo))
                name, ylab = "model KL (nats, log)", "KL"
            else:
                Y = lambda v: oy + mt + ph * (1 - (v - ylo1) / (1.0 - ylo1))
                name, ylab = "top-1 agreement", "top-1"
            out.append('<text x="%.1f" y="%.1f" font-size="12" text-anchor="middle">%s: %s vs bits/element (%s)</text>'
                       % (ox + ml + pw / 2, oy + mt - 10, esc(m), name, ", ".join(esc(d) for d in mdumps)))
            out.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#444"/>' % (ox + ml, oy + mt, pw, ph))
            step = 1 if xmax <= 12 else 2 if xmax <= 24 else 4
            v = 0
            while v <= xmax:
                out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#ddd"/>' % (X(v), oy + mt, X(v), oy + mt + ph))
                out.append('<text x="%.1f" y="%d" text-anchor="middle">%g</text>' % (X(v), oy + mt + ph + 14, v))
                v += step
            out.append('<text x="%.1f" y="%d" text-anchor="middle">bits per element (context)</text>' % (ox + ml + pw / 2, oy + mt + ph + 28))
            if far:
                out.append('<text x="%.1f" y="%d" text-anchor="middle" font-size="9" fill="#555">%s</text>' % (
                    ox + ml + pw / 2, oy + mt + ph + 41, esc("beyond %.1f b/e, not drawn: %s" % (xmax, ", ".join(far)))))
            if row == 0:
                for e in range(lo, hi + 1):
                    out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (ox + ml, Y(10.0 ** e), ox + ml + pw, Y(10.0 ** e)))
                    out.append('<text x="%d" y="%.1f" text-anchor="end">1e%d</text>' % (ox + ml - 4, Y(10.0 ** e) + 4, e))
            else:
                span = 1.0 - ylo1
                ystep = 0.01 if span <= 0.06 else 0.02 if span <= 0.15 else 0.05 if span <= 0.4 else 0.1
                k = 0
                while ylo1 + k * ystep <= 1.0 + 1e-9:
                    v = ylo1 + k * ystep
                    out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>' % (ox + ml, Y(v), ox + ml + pw, Y(v)))
                    out.append('<text x="%d" y="%.1f" text-anchor="end">%.2f</text>' % (ox + ml - 4, Y(v) + 4, v))
                    k += 1
            out.append('<text x="%d" y="%.1f" text-anchor="middle" transform="rotate(-90 %d %.1f)">%s</text>'
                       % (ox + 14, oy + mt + ph / 2, ox + 14, oy + mt + ph / 2, ylab))
            # the bar of issue 13: half the idealised CacheGen's bits (mean over this model's dumps)
            half = 0.5 * sum(i["ideal_bpe"] for i in ids) / len(ids)
            out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000" stroke-dasharray="4 3"/>' % (X(half), oy + mt, X(half), oy + mt + ph))
            out.append('<text x="%.1f" y="%d" text-anchor="start">0.5x ideal</text>' % (X(half) + 3, oy + mt + 12))
            for di, d in enumerate(mdumps):
                mk = MARKS[di % len(MARKS)]
                for f in families:
                    fp = sorted((r for r in pts if r["dump"] == d and r["family"] == f), key=lambda r: r["bits"])
                    val = (lambda r: r["kl"]) if row == 0 else (lambda r: r["top1"])
                    if len(fp) > 1 and (f in LINE_FAMILIES or f.startswith("+")):
                        out.append('<polyline fill="none" stroke="%s" stroke-opacity="0.55" points="%s"/>'
                                   % (color[f], " ".join("%.1f,%.1f" % (X(r["bits"]), Y(val(r))) for r in fp)))
                    for r in fp:
                        out.append('<g><title>%s %s: %.3f b/e, KL %.3g, top-1 %.4f</title>%s</g>'
                                   % (esc(d), esc(r["spec"]), r["bits"], r["kl"], r["top1"], marker(mk, X(r["bits"]), Y(val(r)), color[f])))
                i = ideals[d]
                out.append('<g><title>%s %s: %.3f b/e, KL %.3g</title>%s</g>'
                           % (esc(d), IDEAL, i["ideal_bpe"], i["kl"], marker("star", X(i["ideal_bpe"]), Y(i["kl"] if row == 0 else i["top1"]), "#000")))
    # legend
    ly = 26 + 2 * H + 8
    out.append('<text x="10" y="%d">marker shape = dump (circle, square, triangle = first, second, third of each model); '
               'line = one family on one dump; star = %s; dashed = 0.5x its bits</text>' % (ly, IDEAL))
    entries = families + [IDEAL]
    for k, f in enumerate(entries):
        x, y = 10 + (k % 4) * (width - 20) / 4, ly + 20 + 16 * (k // 4)
        c = "#000" if f == IDEAL else color[f]
        out.append(marker("star" if f == IDEAL else "circle", x + 5, y - 4, c, 3.2))
        out.append('<text x="%.1f" y="%d">%s</text>' % (x + 14, y, esc(f)))
    out.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")


# ---- main -----------------------------------------------------------------------------------------

def measure(a):
    """Runs rd_entropy and kvcodec eval; returns the data every output is rendered from."""
    if a.context_tokens < 1:
        fail(2, "--context-tokens: expected >= 1, found %d" % a.context_tokens)
    if a.chunk < 1:
        fail(2, "--chunk: expected >= 1, found %d" % a.chunk)
    for tool, what in ((a.kvcodec, "--kvcodec"), (a.rd_entropy, "--rd-entropy")):
        if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            fail(2, "%s: %s is not an executable file (build it: cmake --build BUILD --target %s)"
                 % (what, tool, "kvcodec_cli" if what == "--kvcodec" else "rd_entropy"))
    dumps = [d for d in a.dumps.split(",") if d]
    if not dumps:
        fail(2, "--dumps: expected at least one dump name")
    paths = {}
    for d in dumps:
        m = model_of(d)
        if m is None:
            fail(2, "--dumps: %s: expected a name starting with %s" % (d, " or ".join(MODELS)))
        p = os.path.join(a.shared, "kv", d + ".safetensors")
        mp = os.path.join(a.shared, MODELS[m])
        for f in (p, mp):
            if not os.path.isfile(f):
                fail(2, "%s: no such file (--shared %s)" % (f, a.shared))
        paths[d] = (p, mp)

    specs = [] if a.no_default_specs else default_specs()
    if "cachegen" not in specs:
        specs.insert(0, "cachegen")  # the idealised CacheGen's KL is the cachegen preset's
    extra = []
    for s in a.spec:
        if s not in specs:
            specs.append(s)
            extra.append(s)
    families = []
    for s in specs:
        f = family(s, s in extra)
        if f not in families:
            families.append(f)

    # kvw calibrated: per-layer step multipliers measured by `kvcodec calibrate` on the OTHER dumps of the same
    # model (never on the dump it is scored on), then the same rate sweep of both steps
    cal_specs, calibrations, profiles = {d: [] for d in dumps}, {}, {}
    tmpdir = tempfile.mkdtemp(prefix="rd_curve.")
    atexit.register(shutil.rmtree, tmpdir, True)
    for d in ([] if a.no_default_specs else dumps):  # part of the default set
        m = model_of(d)
        others = [x for x in DUMPS if model_of(x) == m and x != d]
        ops = [os.path.join(a.shared, "kv", x + ".safetensors") for x in others]
        if not others or not all(os.path.isfile(op) for op in ops):
            continue
        other = "+".join(others)
        c = run_json([a.kvcodec, "calibrate", "--json", "--model", paths[d][1], "--context-tokens", str(a.context_tokens),
                      "--kstep", "0.2", "--vstep", "0.3"] + ops)
        kl_txt, vl_txt = (c["spec"].split("klayer=")[1].split(",vlayer=")[0], c["spec"].split(",vlayer=")[1])
        calibrations[d] = {"on": other, "spec": c["spec"], "key_kl": c["key_kl"], "value_kl": c["value_kl"]}
        cal_specs[d] = ["kvw:kstep=%g,vstep=%g,klayer=%s,vlayer=%s" % (0.2 * f, 0.3 * f, kl_txt, vl_txt) for f in (0.5, 0.7, 1, 1.4, 2, 2.8)]
        # klt: the model's KV profile (per-head transforms) fitted on the same other dumps by
        # `kvcodec calibrate --profile-out`, which then calibrates klt's per-layer multipliers with it
        prof = os.path.join(tmpdir, d + ".profile.safetensors")
        c = run_json([a.kvcodec, "calibrate", "--json", "--model", paths[d][1], "--context-tokens", str(a.context_tokens),
                      "--kstep", "0.2", "--vstep", "0.3", "--profile-out", prof, "-f"] + ops)
        kl_txt, vl_txt = (c["spec"].split("klayer=")[1].split(",vlayer=")[0], c["spec"].split(",vlayer=")[1].split("|")[0])
        calibrations[d].update({"klt_spec": c["spec"], "profile_hash": c["profile_hash"]})
        profiles[d] = prof
        cal_specs[d] += ["klt:kstep=%g,vstep=%g,klayer=%s,vlayer=%s|%s" % (0.2 * f, 0.3 * f, kl_txt, vl_txt, KLT_RANS)
                         for f in (0.7, 0.85, 1, 1.15, 1.3, 1.5, 1.8, 2.2)]
        for sp in cal_specs[d]:
            if family(sp, False) not in families:
                families.append(family(sp, False))

    ent = run_json([a.rd_entropy, "--json", "--context-tokens", str(a.context_tokens), "--chunk", str(a.chunk)] + [paths[d][0] for d in dumps])
    rows, ideals = [], {}
    for d, e in zip(dumps, ent):
        p, mp = paths[d]
        cmd = [a.kvcodec, "eval", "-j", "1", "--repeats", "1", "--chunk", str(a.chunk), "--model", mp,
               "--context-tokens", str(a.context_tokens), "--json"]
        dspecs = specs + cal_specs[d]
        if d in profiles:
            cmd += ["--profile", profiles[d]]
        for s in dspecs:
            cmd += ["-c", s]
        res = run_json(cmd + [p])
        if len(res) != len(dspecs):
            fail(1, "%s: eval returned %d results for %d specs" % (d, len(res), len(dspecs)))
        for s, r in zip(dspecs, res):
            mm = r.get("model") or {}
            if mm.get("kl") is None or mm.get("top1_agreement") is None:
                fail(1, "%s %s: eval gave no model KL/top-1 (model object: %s)" % (d, s, json.dumps(mm)))
            rows.append({"dump": d, "spec": s, "family": family(s, s in extra), "codec": r["codec"],
                         "bits": mm["context_bits_per_element"], "kl": mm["kl"], "top1": mm["top1_agreement"]})
        cg = next(r for r in rows if r["dump"] == d and r["spec"] == "cachegen")
        ideals[d] = dict(e, kl=cg["kl"], top1=cg["top1"], cachegen_eval_bpe=cg["bits"])
        if abs(cg["bits"] - e["cachegen_bpe"]) > 1e-9 * max(1.0, cg["bits"]):
            fail(1, "%s: cachegen spends %.6f b/e in eval but %.6f in rd_entropy: not the same context"
                 % (d, cg["bits"], e["cachegen_bpe"]))
        print("rd_curve: %s done (%d specs)" % (d, len(dspecs)), file=sys.stderr)
    for r in rows:
        r["ratio"] = r["bits"] / ideals[r["dump"]]["ideal_bpe"]
        r["ratio_no_tables"] = r["bits"] / ideals[r["dump"]]["ideal_no_tables_bpe"]
    best = {}
    for d in dumps:
        ok = [r for r in rows if r["dump"] == d and r["kl"] <= ideals[d]["kl"]]
        best[d] = min(ok, key=lambda r: r["bits"])["spec"] if ok else None

    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    argv = " ".join(shlex.quote(x) for x in sys.argv[1:])
    return {"generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
            "command": "bench/rd_curve.py" + (" " + argv if argv else ""), "context_tokens": a.context_tokens,
            "chunk_tokens": a.chunk, "dumps": dumps, "families": families, "ideal": ideals, "rows": rows, "best": best,
            "calibrations": calibrations}


def interpolate_bits(points, kl):
    """Bits at model KL `kl` on a rate sweep (its Pareto frontier: sorted by bits, each point with a lower KL
    than every smaller one): linear in (bits, log KL) between the two frontier points that bracket it; None
    when the frontier does not bracket it."""
    pts, lowest = [], math.inf  # the Pareto frontier: a 2-D grid (kvw) as well as a 1-D sweep
    for p in sorted((p for p in points if p["kl"] > 0), key=lambda p: p["bits"]):
        if p["kl"] < lowest:
            pts.append(p)
            lowest = p["kl"]
    for a, b in zip(pts, pts[1:]):
        if b["kl"] <= kl <= a["kl"] and a["kl"] > b["kl"]:
            t = (math.log(a["kl"]) - math.log(kl)) / (math.log(a["kl"]) - math.log(b["kl"]))
            return a["bits"] + t * (b["bits"] - a["bits"])
    return None


def render(data, out):
    """Writes OUT/rd_curve.md, OUT/rd_curve.svg and OUT/rd_curve.json from `data` (measure()'s result)."""
    dumps, ideals, rows, C = data["dumps"], data["ideal"], data["rows"], data["context_tokens"]
    for r in rows:  # the plot family follows this script's rules, also for data measured by an older one
        r["family"] = family(r["spec"], r["family"].startswith("+"))
    families = []
    for r in rows:
        if r["family"] not in families:
            families.append(r["family"])
    best = {d: next((r for r in rows if r["dump"] == d and r["spec"] == data["best"][d]), None) for d in dumps}
    L = ["# Rate-distortion with the model in the loop: every codec family on the real dumps", "",
         "Generated %s at commit %s by `%s` (kvcodec eval -j 1, rd_entropy; one command regenerates this file, "
         "rd_curve.svg and rd_curve.json)." % (data["generated"], data["commit"], data["command"]), "",
         "Protocol (`kvcodec eval --model M --context-tokens %d --chunk %d`): tokens [0, %d) of each dump are the context a codec "
         "compresses (bits/element = its bytes x 8 / its K+V elements); positions [%d, T) are computed by the model and scored: "
         "KL = mean KL(full || lossy) of the next-token distributions (nats), top-1 = argmax agreement."
         % (C, data["chunk_tokens"], C, C), "",
         "**%s** (bench/rd_entropy.cpp): the `cachegen` preset's quantizer (cachegen-quant, LMCache's tiered bins) with its "
         "symbols counted at their empirical entropy per (layer, K/V, channel, chunk) (CacheGen's `ac:ctx=channel` contexts) "
         "+ its f16 scales + the 33 x u16 CDF that CacheGen stores per context: LMCache's per-token stream lengths and coder "
         "flushes removed, nothing else. Its KL and top-1 are the `cachegen` preset's (same reconstruction). "
         "`ratio` = bits / its bits on the same dump; `no-table` = entropy + scales only, a lower bound that no coder with "
         "static per-chunk tables reaches." % IDEAL, "",
         "## Per dump: the idealised CacheGen and the smallest spec at no worse model KL", "",
         "| dump | entropy | scales | tables | **ideal b/e** | no-table b/e | `cachegen` b/e | ideal KL | ideal top-1 | smallest spec at KL <= ideal | its b/e | its KL | **ratio** | ratio to no-table |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for d in dumps:
        i, b = ideals[d], best[d]
        L.append("| %s | %.3f | %.3f | %.3f | **%.3f** | %.3f | %.3f | %s | %.4f | %s | %s | %s | **%s** | %s |" % (
            d, i["entropy_bpe"], i["scale_bpe"], i["table_bpe"], i["ideal_bpe"], i["ideal_no_tables_bpe"], i["cachegen_eval_bpe"],
            fmt_kl(i["kl"]), i["top1"], md_cell(b["spec"]) if b else "none", "%.3f" % b["bits"] if b else "-",
            fmt_kl(b["kl"]) if b else "-", "%.3fx" % b["ratio"] if b else "-", "%.3fx" % b["ratio_no_tables"] if b else "-"))
    ok_all = all(best[d] and best[d]["ratio"] <= 0.5 for d in dumps)
    sweeps = [f for f in families if f in ("kvc", "kvc values=channel", "kvw", "kvw calibrated", "klt calibrated") or f.startswith("+")]
    if sweeps:
        L += ["", "Rate sweeps read at the idealised CacheGen's KL (linear in bits vs log KL between the two points that bracket it; "
              "`-` = the sweep does not reach it): the bits a sweep would need with a continuous rate axis.", "",
              "| dump | ideal KL | " + " | ".join("%s b/e (ratio)" % md_cell(f) for f in sweeps) + " |",
              "|---|---:|" + "---:|" * len(sweeps)]
        for d in dumps:
            i = ideals[d]
            cells_ = []
            for f in sweeps:
                b = interpolate_bits([r for r in rows if r["dump"] == d and r["family"] == f], i["kl"])
                cells_.append("-" if b is None else "%.3f (%.3fx)" % (b, b / i["ideal_bpe"]))
            L.append("| %s | %s | %s |" % (d, fmt_kl(i["kl"]), " | ".join(cells_)))
    cal = data.get("calibrations") or {}
    if cal:
        L += ["", "`kvw calibrated`: per-layer step multipliers from `kvcodec calibrate --model M --context-tokens %d --kstep 0.2 "
              "--vstep 0.3` run on the other dumps of the same model (never the one scored), then kstep = 0.2 f, vstep = 0.3 f for "
              "f = 0.5, 0.7, 1, 1.4, 2, 2.8:" % C, ""]
        for d in dumps:
            if d in cal:
                L.append("- %s: calibrated on %s: `%s`" % (d, cal[d]["on"], cal[d]["spec"]))
        if any("klt_spec" in cal[d] for d in cal):
            L += ["", "`klt calibrated`: the model's KV profile (per-head metric-weighted KLT, include/kvcodec/core/klt.hpp) fitted and "
                  "klt's multipliers calibrated by `kvcodec calibrate --model M --context-tokens %d --kstep 0.2 --vstep 0.3 "
                  "--profile-out P` on the same other dumps; then `kvcodec eval --profile P` with kstep = 0.2 f, vstep = 0.3 f for "
                  "f = 0.7 .. 2.2. The profile (%s per model) is not counted in the bits, as a zstd dictionary is not:" % (C, "one file"), ""]
            for d in dumps:
                if "klt_spec" in cal.get(d, {}):
                    L.append("- %s: profile %s from %s: `%s`" % (d, cal[d]["profile_hash"], cal[d]["on"], cal[d]["klt_spec"]))
    L += ["", "Issue 13's bar (<= 0.5x the idealised CacheGen's bits at no worse model KL, on every dump): **%s**." %
          ("met" if ok_all else "not met"), "",
          "## Every codec on every dump", "",
          "| dump | codec | family | bits/element | model KL | top-1 | ratio to ideal | KL <= ideal |",
          "|---|---|---|---:|---:|---:|---:|:-:|"]
    for d in dumps:
        i = ideals[d]
        L.append("| %s | **%s** | - | %.3f | %s | %.4f | 1.000x | = |" % (d, IDEAL, i["ideal_bpe"], fmt_kl(i["kl"]), i["top1"]))
        for r in sorted((r for r in rows if r["dump"] == d), key=lambda r: r["bits"]):
            L.append("| %s | %s | %s | %.3f | %s | %.4f | %.3fx | %s |" % (
                d, md_cell(r["spec"]), r["family"], r["bits"], fmt_kl(r["kl"]), r["top1"], r["ratio"], "yes" if r["kl"] <= i["kl"] else "no"))
    L += ["", "Plot: rd_curve.svg (bits vs model KL on a log axis, and bits vs top-1, one column per model)."]
    os.makedirs(out, exist_ok=True)
    md = os.path.join(out, "rd_curve.md")
    with open(md, "w") as fh:
        fh.write("\n".join(L) + "\n")
    write_svg(os.path.join(out, "rd_curve.svg"), rows, ideals, families, dumps,
              "kvcodec rate-distortion, model in the loop (context %d tokens), %s" % (C, data["generated"]))
    with open(os.path.join(out, "rd_curve.json"), "w") as fh:
        json.dump(data, fh, indent=1)
    print("rd_curve: wrote %s, rd_curve.svg, rd_curve.json" % md, file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kvcodec", default=os.path.join(ROOT, "build/cli/kvcodec"))
    ap.add_argument("--rd-entropy", default=os.path.join(ROOT, "build/bench/rd_entropy"))
    ap.add_argument("--shared", default=os.environ.get("KVCODEC_SHARED", os.path.join(ROOT, "..", "shared")))
    ap.add_argument("--dumps", default=",".join(DUMPS), help="comma-separated dump names under SHARED/kv (without .safetensors)")
    ap.add_argument("--spec", action="append", default=[], help="extra codec spec (repeat); plotted as family +STAGE")
    ap.add_argument("--no-default-specs", action="store_true", help="only cachegen and the --spec codecs")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results"))
    ap.add_argument("--context-tokens", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--replot", metavar="JSON", help="re-render the outputs from a rd_curve.json without measuring again")
    a = ap.parse_args()
    if a.replot:
        try:
            with open(a.replot) as fh:
                data = json.load(fh)
            for k in ("dumps", "ideal", "rows", "best", "context_tokens", "chunk_tokens", "generated", "commit", "command"):
                if k not in data:
                    fail(2, "%s: field '%s' missing (expected a rd_curve.json)" % (a.replot, k))
        except (OSError, json.JSONDecodeError) as e:
            fail(2, "--replot %s: %s" % (a.replot, e))
    else:
        data = measure(a)
    render(data, a.out)


if __name__ == "__main__":
    main()

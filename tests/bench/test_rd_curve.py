"""Smoke test of bench/rd_curve.py (ctest entry bench.rd_curve): one real dump, two specs, into a temp dir.

Checks that the three outputs parse and agree with each other and with the definitions: the idealised
CacheGen's bits are its entropy + scales + tables and lie below the `cachegen` preset's actual bits, every
ratio is bits / ideal, the per-dump best is the smallest spec at no worse KL, the SVG is well-formed XML
with one marker per point; and that bad input exits 2 naming what is wrong, with nothing written
(a bad spec: kvcodec's usage status 1).
Usage: python3 test_rd_curve.py RD_CURVE_PY KVCODEC RD_ENTROPY SHARED_DIR   (exit 77 = skipped: no shared dumps)
"""
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

script, kvcodec, rd_entropy, shared = sys.argv[1:5]
DUMP = "stories260K-s0"
SPECS = ["kvc:level=6", "kivi:bits=2|rans"]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL: " + what, file=sys.stderr)


if not os.path.isfile(os.path.join(shared, "kv", DUMP + ".safetensors")):
    print("skipped: %s/kv/%s.safetensors is not there (the shared dumps sit beside the project)" % (shared, DUMP))
    sys.exit(77)


def run(out, *extra):
    cmd = [sys.executable, script, "--kvcodec", kvcodec, "--rd-entropy", rd_entropy, "--shared", shared, "--out", out] + list(extra)
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)


def cells(line):
    # a Markdown row; '\|' inside a cell is an escaped '|'
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def num(s):
    return float(s.strip("*x` "))


# interpolate_bits: linear in (bits, log KL) between the bracketing neighbours, None outside the sweep
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
import rd_curve  # noqa: E402

sweep = [{"bits": 4.0, "kl": 1e-2}, {"bits": 2.0, "kl": 1e-1}, {"bits": 6.0, "kl": 1e-4}]
check(abs(rd_curve.interpolate_bits(sweep, 1e-3) - 5.0) < 1e-12, "interpolated at 1e-3 between 4 b/e (1e-2) and 6 b/e (1e-4)")
check(abs(rd_curve.interpolate_bits(sweep, 1e-1) - 2.0) < 1e-12, "at an end point")
check(rd_curve.interpolate_bits(sweep, 1e-5) is None and rd_curve.interpolate_bits(sweep, 1.0) is None, "outside: None")

with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "res")
    args = ["--dumps", DUMP, "--no-default-specs"]
    for s in SPECS:
        args += ["--spec", s]
    p = run(out, *args)
    check(p.returncode == 0, "rd_curve exits 0 (got %d: %s)" % (p.returncode, p.stderr))
    if p.returncode == 0:
        data = json.load(open(os.path.join(out, "rd_curve.json")))
        ideal = data["ideal"][DUMP]
        rows = data["rows"]
        specs = [r["spec"] for r in rows]
        check(specs == ["cachegen"] + SPECS, "json rows are cachegen (added for the ideal's KL) + the two specs: %s" % specs)
        check(abs(ideal["ideal_bpe"] - (ideal["entropy_bpe"] + ideal["scale_bpe"] + ideal["table_bpe"])) < 1e-12,
              "ideal = entropy + scales + tables")
        check(ideal["ideal_no_tables_bpe"] < ideal["ideal_bpe"] < ideal["cachegen_bpe"],
              "no-table bound < ideal < cachegen's actual bits (%s)" % ideal)
        check(0 < ideal["entropy_bpe"] <= math.log2(32), "entropy per element within (0, log2 32]")
        check(abs(ideal["scale_bpe"] - 16.0 / 32) < 1e-12, "one f16 scale per token per 32 channels (stories260K: 4 heads x 8)")
        cg = rows[0]
        check(cg["kl"] == ideal["kl"] and cg["top1"] == ideal["top1"], "the ideal's KL/top-1 are cachegen's")
        check(abs(cg["bits"] - ideal["cachegen_bpe"]) < 1e-9, "eval and rd_entropy see the same context encoding of cachegen")
        for r in rows:
            check(abs(r["ratio"] - r["bits"] / ideal["ideal_bpe"]) < 1e-12, "ratio of %s = bits / ideal" % r["spec"])
            check(r["kl"] >= 0 and 0 <= r["top1"] <= 1 and r["bits"] > 0, "%s: sane numbers %s" % (r["spec"], r))
        ok = [r for r in rows if r["kl"] <= ideal["kl"]]
        want = min(ok, key=lambda r: r["bits"])["spec"]
        check(data["best"][DUMP] == want, "best spec %s is the smallest at KL <= ideal (%s)" % (data["best"][DUMP], want))

        md = open(os.path.join(out, "rd_curve.md")).read().splitlines()
        summary = [l for l in md if l.startswith("| " + DUMP + " | ") and len(cells(l)) == 14]
        check(len(summary) == 1, "one per-dump summary row")
        if summary:
            c = cells(summary[0])
            check(abs(num(c[4]) - ideal["ideal_bpe"]) < 6e-4, "summary ideal b/e %s" % c[4])
            check(c[9].strip("`") == want, "summary best spec %s" % c[9])
            check(abs(num(c[12]) - [r for r in rows if r["spec"] == want][0]["ratio"]) < 6e-4, "summary ratio %s" % c[12])
        full = [cells(l) for l in md if l.startswith("| " + DUMP + " | ") and len(cells(l)) == 8]
        check(len(full) == 4, "full table: ideal + 3 codecs (%d rows)" % len(full))
        names = set(c[1].strip("`*") for c in full)
        check(names == {"idealised CacheGen", "cachegen"} | set(SPECS), "full table names %s" % names)
        for c in full:
            check(abs(num(c[3]) / ideal["ideal_bpe"] - num(c[6])) < 2e-3, "row %s: ratio column = bits / ideal" % c[1])
        check(any("not met" in l or "met" in l for l in md), "the bar line is there")

        svg = ET.parse(os.path.join(out, "rd_curve.svg")).getroot()
        check(svg.tag.endswith("svg"), "SVG root is <svg>")
        ns = "{http://www.w3.org/2000/svg}"
        titles = [t.text for t in svg.iter(ns + "title")]
        # two panels (KL, top-1) x (the codecs up to twice the ideal's bits + the ideal); farther ones are named instead
        xmax = min(max(r["bits"] for r in rows), 2 * ideal["ideal_bpe"]) * 1.05
        near = [r for r in rows if r["bits"] <= xmax]
        check(len(titles) == 2 * (len(near) + 1), "%d plotted points with tooltips (%d)" % (2 * (len(near) + 1), len(titles)))
        texts = " ".join(t.text or "" for t in svg.iter(ns + "text"))
        for r in rows:
            if r["bits"] > xmax:
                check("not drawn" in texts and r["spec"] in texts, "%s (%.1f b/e) is named as not drawn" % (r["spec"], r["bits"]))
        check(sum(1 for t in titles if "idealised CacheGen" in t) == 2, "the ideal is plotted in both panels")
        check(any("KL" in (t.text or "") for t in svg.iter(ns + "text")), "axis/panel labels mention KL")

    # bad input: a dump that does not exist, a spec that does not parse; exit 2, nothing written
    bad = os.path.join(tmp, "bad")
    p = run(bad, "--dumps", "stories260K-nosuch", "--no-default-specs")
    check(p.returncode == 2 and "stories260K-nosuch.safetensors" in p.stderr, "missing dump: exit 2 naming it (%d: %s)" % (p.returncode, p.stderr))
    p = run(bad, "--dumps", DUMP, "--no-default-specs", "--spec", "kvc:level=42")
    check(p.returncode == 1 and "level" in p.stderr and "42" in p.stderr, "bad spec: kvcodec's usage exit 1 naming the parameter (%d: %s)" % (p.returncode, p.stderr))
    p = run(bad, "--dumps", "llama-x")
    check(p.returncode == 2 and "llama-x" in p.stderr, "unknown model prefix: exit 2 (%d: %s)" % (p.returncode, p.stderr))
    check(not os.path.exists(bad), "nothing written on failure")

# rd_entropy itself: a missing dump and a context longer than the dump exit 2 naming them; a bad option exits 1
p = subprocess.run([rd_entropy, os.path.join(shared, "kv", "nosuch.safetensors")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
check(p.returncode == 2 and "nosuch.safetensors" in p.stderr, "rd_entropy: missing dump exits 2 naming it (%d: %s)" % (p.returncode, p.stderr))
p = subprocess.run([rd_entropy, "--context-tokens", "100000", os.path.join(shared, "kv", DUMP + ".safetensors")],
                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
check(p.returncode == 2 and "tokens" in p.stderr and "100000" in p.stderr, "rd_entropy: too long a context exits 2 (%d: %s)" % (p.returncode, p.stderr))
p = subprocess.run([rd_entropy, "--chunk", "0", "x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
check(p.returncode == 1 and "--chunk" in p.stderr, "rd_entropy: --chunk 0 exits 1 (%d: %s)" % (p.returncode, p.stderr))

print("%d failure(s)" % len(failures))
sys.exit(1 if failures else 0)

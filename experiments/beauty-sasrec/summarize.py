#!/usr/bin/env python3
"""Prints the docs/RESULTS.md tables of the SASRec objectives comparison from
experiments/beauty-sasrec/*.result.json (run.sh writes them) and cuda/*.result.json
(the same configs run on an H200 by scripts/gpu_arms.sh); the first seed-42 runs,
with length batches, are in length-batching/ (their configs are in git history,
commit 10ea77f). Arms run on different devices (the H200, and the two CPU machines)
are listed and averaged apart.

  --paired A B   instead: arms matching the regular expression A against those
                 matching B, paired by seed on one device (the goal's comparisons
                 in RESULTS.md), with the paired differences of test NDCG@10.
"""
import glob
import json
import os
import re
import statistics
import sys

here = os.path.dirname(os.path.abspath(__file__))
rows = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(here, "*.result.json")) + glob.glob(os.path.join(here, "cuda", "*.result.json")))]


def device(r):
    if r["train"]["report"]["device"].startswith("Cuda"):
        return "CUDA"
    # The CPU runs' two machines differ in libtorch's last digits (RESULTS.md).
    m = r.get("machine", "")
    return "CPU (EPYC)" if "EPYC" in m else "CPU (Xeon)" if "Xeon" in m else "CPU"


def base(arm):
    # "-xeon": rerun on the Xeon (its own workdir), grouped with the Xeon's seeds.
    return re.sub(r"(-xeon)?(-s\d+)?$", "", arm)


def seed(arm):
    m = re.search(r"-s(\d+)$", arm)
    return int(m.group(1)) if m else 42


def cfg(arm):
    text = open(os.path.join(here, arm + ".toml")).read()
    def get(k, default=None):
        m = re.search(rf"^{k} = (.*)$", text, re.M)
        if m is None and default is None:
            raise KeyError(f"{arm}.toml has no {k}")
        return m.group(1).strip('"') if m else default

    c = {k: get(k) for k in ["loss", "sampler", "temperature", "n-hard", "n-random", "logq", "warmup", "random-scope", "batch-size", "max-hardness"]}
    c["random-groups"] = int(get("random-groups", "1"))
    # Which parts of FreeRec's block the arm uses: its residual, its attended padding
    # and initialisation (set together in every arm; the whole block has all three).
    residual = get("sasrec-residual", "query") == "input"
    padinit = get("sasrec-padding", "masked") == "attended"
    c["block"] = {(True, True): " (FreeRec block)", (True, False): " (FreeRec residual)",
                  (False, True): " (FreeRec padding + init)", (False, False): ""}[(residual, padinit)]
    c["random"] = get("random-negatives", "uniform")
    if c["random"] == "popularity":
        c["random"] += f" (α {get('random-alpha', '1.0')})"
    c["prior"] = get("bce-offset", "none") == "prior"
    c["weight"] = float(get("negative-weight", "1.0"))
    c["history"] = get("history-negatives", "false") == "true"
    c["distinct"] = get("distinct", "false") == "true"
    c["head"] = int(get("head-negatives", "0"))
    # The recipe's optimiser and dropout, named where an arm departs from them.
    c["recipe"] = "".join(
        f", {name} {get(k)}" for k, name, want in [("lr", "lr", 0.0005), ("dropout", "dropout", 0.6)]
        if float(get(k)) != want
    )
    return c


def sd(x):
    """Sample standard deviation; 0 for a single value."""
    return statistics.stdev(x) if len(x) > 1 else 0.0


def paired(pat_a, pat_b):
    """Test NDCG@10 of the arms matching pat_a against those matching pat_b, seed by
    seed on the same device: both means, the ratio, and the paired differences'
    mean, sd and standard error."""
    def pick(pat):
        # Two arms of one seed on one device would pair only one of them, unseen.
        out = {}
        for r in rows:
            if re.fullmatch(pat, r["arm"]):
                k = (seed(r["arm"]), device(r))
                if k in out:
                    sys.exit(f"{pat!r} matches {out[k]['arm']} and {r['arm']}, both seed {k[0]} on {k[1]}")
                out[k] = r
        return out
    a, b = pick(pat_a), pick(pat_b)
    keys = sorted(set(a) & set(b), key=lambda k: (k[1], k[0]))
    if not keys:
        sys.exit(f"no seed on one device has arms matching both {pat_a!r} and {pat_b!r}")
    ndcg = lambda r: r["evaluate"]["report"]["test_full"]["NDCG@10"]
    hr = lambda r: r["evaluate"]["report"]["test_full"]["HR@10"]
    print("| seed | device | A | B | A − B | HR@10 A | HR@10 B | A's arm | B's arm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        ra, rb = a[k], b[k]
        print(f"| {k[0]} | {k[1]} | {ndcg(ra):.5f} | {ndcg(rb):.5f} | {ndcg(ra) - ndcg(rb):+.5f} | {hr(ra):.4f} | {hr(rb):.4f} | {ra['arm']} | {rb['arm']} |")
    na, nb = [ndcg(a[k]) for k in keys], [ndcg(b[k]) for k in keys]
    d = [x - y for x, y in zip(na, nb)]
    print()
    print(f"{len(keys)} pairs: A {statistics.mean(na):.5f} ± {sd(na):.5f}, B {statistics.mean(nb):.5f} ± {sd(nb):.5f} (mean ± sd), "
          f"A / B {statistics.mean(na) / statistics.mean(nb):.1%}; A − B: mean {statistics.mean(d):+.5f}, sd {sd(d):.5f}, "
          f"standard error {sd(d) / len(d) ** 0.5:.5f}; A ahead on {sum(x > 0 for x in d)} of {len(d)}; "
          f"HR@10 A {statistics.mean(hr(a[k]) for k in keys):.4f}, B {statistics.mean(hr(b[k]) for k in keys):.4f}")


if len(sys.argv) > 1:
    if len(sys.argv) != 4 or sys.argv[1] != "--paired":
        sys.exit("usage: summarize.py [--paired A B]")
    paired(sys.argv[2], sys.argv[3])
    sys.exit(0)

print("| arm | loss | negatives | logQ | seed | device | test NDCG@10 | HR@10 | NDCG@20 | HR@20 | NDCG@10, history in | best epoch / run | train s/epoch | epochs' time |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
rows.sort(key=lambda r: (base(r["arm"]), device(r), seed(r["arm"]) != 42, seed(r["arm"])))
for r in rows:
    e, t = r["evaluate"]["report"], r["train"]["report"]
    c = cfg(r["arm"])
    if c["loss"] == "full-softmax":
        negs = "all items"
    else:
        hard = f"{c['n-hard']}{' distinct' if c['distinct'] else ''} {c['sampler']}" + (f" τ={c['temperature']}" if c["sampler"] == "gnno" else "")
        if c["sampler"] == "gnno" and float(c["max-hardness"]) != 0.5:
            hard += f" cap {c['max-hardness']}"
        if c["random-scope"] == "position":
            per = "per position"
        elif c["random-scope"] == "interleaved":
            per = f"per draw, {c['random-groups']} draws a batch dealt to the positions in turn"
        elif c["random-scope"] != "batch":
            per = "per user"
        elif c["random-groups"] > 1:
            per = f"per group of {int(c['batch-size']) // c['random-groups']} users"
        else:
            per = "per batch"
        negs = f"{c['n-random']} {c['random']} {per}"
        if int(c["n-hard"]) > 0:
            negs += f" + {hard} from epoch {c['warmup']}"
        if c["weight"] != 1.0:
            negs += f", each weighted {c['weight']:g}"
        if c["history"]:
            negs += " + the row's own window, exactly"
        if c["head"]:
            negs += f" + the {c['head']} most frequent items, exactly"
    f, o = e["test_full"], e["test_full_other_protocol"]
    loss = c["loss"] + c["block"] + (" + prior offset" if c["prior"] else "") + c["recipe"]
    print(
        f"| {r['arm']} | {loss} | {negs} | {c['logq']} | {seed(r['arm'])} | {device(r)} | {f['NDCG@10']:.4f} | {f['HR@10']:.4f} | {f['NDCG@20']:.4f} | {f['HR@20']:.4f} | "
        f"{o['NDCG@10']:.4f} | {t['best_epoch']} / {t['epochs_run']} | {t['mean_train_seconds_per_epoch']:.1f} | {sum(e['seconds'] for e in t['epochs']) / 60:.0f} min |"
    )

groups = {}
for r in rows:
    groups.setdefault((base(r["arm"]), device(r)), []).append(r)
multi = {k: v for k, v in groups.items() if len(v) > 1}
if multi:
    print()
    print("| arm | device | seeds | test NDCG@10 mean ± sd | HR@10 mean ± sd | train s/epoch |")
    print("|---|---|---|---|---|---|")
    for (k, dev), v in multi.items():
        n = [r["evaluate"]["report"]["test_full"]["NDCG@10"] for r in v]
        h = [r["evaluate"]["report"]["test_full"]["HR@10"] for r in v]
        s = [r["train"]["report"]["mean_train_seconds_per_epoch"] for r in v]
        print(f"| {k} | {dev} | {', '.join(str(seed(r['arm'])) for r in v)} | {statistics.mean(n):.4f} ± {sd(n):.4f} | {statistics.mean(h):.4f} ± {sd(h):.4f} | {statistics.mean(s):.1f} |")

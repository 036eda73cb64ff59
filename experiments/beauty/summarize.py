#!/usr/bin/env python3
"""Prints the docs/RESULTS.md tables from experiments/beauty/*.result.json (run.sh writes them)."""
import glob
import json
import os
import subprocess

here = os.path.dirname(os.path.abspath(__file__))
rows = []
gnno = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/gnno/target")), "release", "gnno")
for f in sorted(glob.glob(os.path.join(here, "*.result.json"))):
    r = json.load(open(f))
    # A fresh audit, so every arm's J comes from the graph store the same way.
    out = subprocess.run([gnno, "--config", os.path.join(here, r["arm"] + ".toml"), "--quiet", "audit", "negatives", "--json"], capture_output=True, text=True, check=True)
    r["audit"] = json.loads(out.stdout)
    rows.append(r)

import re

order = ["uniform", "gnno", "gnno-tau01", "uniform-w5", "gnno-w5", "gnno-tau01-w5"]


def base(arm):
    return re.sub(r"-s\d+$", "", arm)


def seed(arm):
    m = re.search(r"-s(\d+)$", arm)
    return int(m.group(1)) if m else 42


rows.sort(key=lambda r: (order.index(base(r["arm"])) if base(r["arm"]) in order else 99, seed(r["arm"]) != 42, seed(r["arm"])))
print("| arm | sampler, τ, warm-up | seed | test HR@10 | NDCG@10 | HR@20 | NDCG@20 | sampled-1000 HR@10 | NDCG@10 | best epoch / run | wall |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    e = r["evaluate"]["report"]
    t = r["train"]["report"]
    full, samp = e["test_full"], e["test_sampled"] or {}
    audit = r["audit"]["epochs"]
    hard = [a for a in audit if a["hardness"] is not None]
    arm = base(r["arm"])
    sampler = "uniform" if arm.startswith("uniform") else "gnno"
    tau = "0.1" if "tau01" in arm else "1"
    warm = "5" if arm.endswith("w5") else "19"
    desc = f"{sampler}, τ={tau}, warm-up {warm}" if sampler == "gnno" else f"uniform, warm-up {warm}"
    print(
        f"| {r['arm']} | {desc} | {seed(r['arm'])} | {full['HR@10']:.4f} | {full['NDCG@10']:.4f} | {full['HR@20']:.4f} | {full['NDCG@20']:.4f} | "
        f"{samp.get('HR@10', float('nan')):.4f} | {samp.get('NDCG@10', float('nan')):.4f} | {t['best_epoch']} / {t['epochs_run']} | {r['wall_s'] / 60:.1f} min |"
    )
groups = {}
for r in rows:
    groups.setdefault(base(r["arm"]), []).append(r)
multi = {k: v for k, v in groups.items() if len(v) > 1}
if multi:
    print()
    print("Arms with several seeds: mean ± half the range over seeds")
    print()
    print("| arm | seeds | test HR@10 | NDCG@10 | HR@20 | NDCG@20 |")
    print("|---|---|---|---|---|---|")
    for k, v in multi.items():
        cells = []
        for key in ("HR@10", "NDCG@10", "HR@20", "NDCG@20"):
            xs = [x["evaluate"]["report"]["test_full"][key] for x in v]
            cells.append(f"{sum(xs) / len(xs):.4f} ± {(max(xs) - min(xs)) / 2:.4f}")
        print(f"| {k} | {', '.join(str(seed(x['arm'])) for x in v)} | " + " | ".join(cells) + " |")
print()
print("Audit of the shards each run trained on (epochs the training reached):")
print()
print("| arm | epoch | h | J p50 | J p90 | J p99 | share J>0 | = dev item | = test item | in history | distinct |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if seed(r["arm"]) != 42:
        continue
    ran = r["train"]["report"]["epochs_run"]
    for a in r["audit"]["epochs"]:
        if a["hardness"] is None or a["epoch"] >= ran:
            continue
        if a["epoch"] % 6 and a["epoch"] != ran - 1:
            continue
        q = a["overlap_quantiles"]
        print(
            f"| {r['arm']} | {a['epoch']} | {a['hardness']:.2f} | {q[2]:.4f} | {q[4]:.4f} | {q[5]:.4f} | {a['share_overlap_positive']:.3f} | "
            f"{a['share_dev_item']:.5f} | {a['share_test_item']:.5f} | {a['share_in_train_history']:.4f} | {a['distinct_items']} |"
        )
print()
print("Machine:", rows[0]["machine"] if rows else "?")

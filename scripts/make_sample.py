#!/usr/bin/env python3
"""Writes data/sample.tsv: a small synthetic interaction log with planted structure.

Items fall into clusters; each user browses one or two clusters, mostly moving to a
"next" item of the same cluster, so the item transition graph has real
neighbourhoods and a recommender has something to learn. Deterministic (seeded).
Usage: python3 scripts/make_sample.py [out] [users] [items]
"""
import random
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "data/sample.tsv"
n_users = int(sys.argv[2]) if len(sys.argv) > 2 else 1200
n_items = int(sys.argv[3]) if len(sys.argv) > 3 else 400
rng = random.Random(20230723)
clusters = 20
per = n_items // clusters
t0 = 1_400_000_000
with open(out, "w") as f:
    f.write("user_id\titem_id\ttimestamp\trating\n")
    for u in range(n_users):
        length = rng.randint(6, 24)
        c = rng.randrange(clusters)
        pos = rng.randrange(per)
        t = t0 + rng.randrange(10_000_000)
        for _ in range(length):
            if rng.random() < 0.3:
                c = rng.randrange(clusters)
                pos = rng.randrange(per)
            else:
                pos = (pos + rng.choice((1, 1, 2, 3, 5, 8))) % per
            item = c * per + pos
            t += rng.randrange(0, 3 * 86400)
            rating = rng.choice((3, 4, 4, 5, 5))
            f.write(f"U{u:05d}\tI{item:04d}\t{t}\t{rating}\n")

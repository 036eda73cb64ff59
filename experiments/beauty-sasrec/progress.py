#!/usr/bin/env python3
"""Where each arm's training stands, read from its newest epoch checkpoint
(work/<arm>/train/run-*/checkpoint/state.json): epochs done, best dev NDCG@10 and
its epoch, the last epoch's dev NDCG@10 and seconds, and how hard the last epoch's
negatives were (share of random / hard negatives the model scored above the target).
Optional: dev NDCG@10 of the given arms side by side after every 10th epoch, next
to the reference's (Xu et al.'s SASRec + CE, mean of 5 seeds), or (--hardness) the
hard negatives' share above the target, or (--grid) each arm's dev NDCG@10 read as the
reference reads its own: on its grid of every 5th epoch, the best and the mean over
epochs 100-135 (the plateau), beside each reference seed's.
Usage: progress.py [--curves|--hardness|--grid arm ...]"""
import glob
import json
import os
import sys

here = os.path.dirname(os.path.abspath(__file__))


def history(arm):
    states = glob.glob(os.path.join(here, "work", arm, "train", "run-*", "checkpoint", "state.json"))
    if not states:
        return None
    return json.load(open(max(states, key=os.path.getmtime)))["history"]


def cell(row, key):
    v = row.get(key) if row else None
    return f"{v:22.4f}" if v is not None else " " * 22


def reference_seeds():
    """Dev NDCG@10 of each reference seed by epoch: {epoch: [seed0, ..., seed4]}."""
    ref = {}
    for line in open(os.path.join(here, "reference", "beauty-ce-5.txt")):
        p = line.split()
        if len(p) == 6 and p[0].isdigit():
            ref[int(p[0])] = list(map(float, p[1:]))
    return ref


def grid_line(name, by_epoch):
    """Best dev NDCG@10 on the 5-epoch grid (first epoch of a tie) and the plateau mean."""
    grid = sorted(n for n in by_epoch if n % 5 == 0)
    best = max(grid, key=lambda n: (by_epoch[n], -n))
    plateau = [by_epoch[n] for n in grid if 100 <= n <= 135]
    pm = f"{sum(plateau) / len(plateau):.5f}" if len(plateau) == 8 else "   -   "
    print(f"{name:28} best {by_epoch[best]:.4f} after {best:3d}  plateau 100-135 {pm}")


def reference():
    """Mean dev NDCG@10 of the reference's five seeds by epoch (from the training logs
    of Xu et al.'s SASRec + CE on Beauty, evaluated every 5 epochs)."""
    return {n: {"dev_ndcg10": sum(v) / len(v)} for n, v in reference_seeds().items()}


if len(sys.argv) > 2 and sys.argv[1] == "--grid":
    ref = reference_seeds()
    for s in range(len(next(iter(ref.values())))):
        grid_line(f"reference seed {s}", {n: v[s] for n, v in ref.items()})
    for a in sys.argv[2:]:
        h = history(a) or []
        if len(h) >= 5:
            # After n epochs = history index n - 1, as the reference's logs count.
            grid_line(a, {i + 1: r["dev_ndcg10"] for i, r in enumerate(h)})
    sys.exit()

if len(sys.argv) > 2 and sys.argv[1] in ("--curves", "--hardness"):
    key = "dev_ndcg10" if sys.argv[1] == "--curves" else "hard_above_target"
    arms = sys.argv[2:]
    hs = {a: history(a) or [] for a in arms}
    ref = reference() if key == "dev_ndcg10" else {}
    print("epoch " + " ".join(f"{a:>22}" for a in arms) + (f" {'reference CE (5 seeds)':>22}" if ref else ""))
    # Row n: after n epochs (history index n - 1), as the reference's logs count.
    for n in [1] + list(range(10, max(len(h) for h in hs.values()) + 1, 10)):
        cells = [cell(hs[a][n - 1] if n <= len(hs[a]) else None, key) for a in arms]
        print(f"{n:5d} " + " ".join(cells) + (" " + cell(ref.get(n), key) if ref else ""))
    sys.exit()


def share(v):
    return "  -   " if v is None else f"{v:.4f}"

for d in sorted(os.listdir(os.path.join(here, "work"))):
    h = history(d)
    if not h:
        continue
    best = max(range(len(h)), key=lambda i: h[i]["dev_ndcg10"])
    done = os.path.exists(os.path.join(here, f"{d}.result.json"))
    print(f"{d:28} epochs {len(h):3d}  best dev {h[best]['dev_ndcg10']:.4f} at {best:3d}  last {h[-1]['dev_ndcg10']:.4f}  {h[-1]['seconds']:5.1f} s  above target {share(h[-1].get('random_above_target'))} / {share(h[-1].get('hard_above_target'))}{'  (result written)' if done else ''}")

#!/usr/bin/env python3
"""Score a history with a model exported by gnno (export/run-*/model.safetensors).

    python docs/load_model.py model.safetensors ITEM_ID [ITEM_ID ...] [--top 10]
                              [--include-history] [--json]

ITEM_IDs are raw item ids, oldest first. Prints the top items (raw id and score),
the history's own items left out unless --include-history, the way the export
stage's recommendations are made. Depends on PyTorch only: the file is parsed
with json and torch.frombuffer, and SASRec's forward pass is rebuilt from the
tensors (names and shapes: docs/FORMATS.md, "export").

Only backbone = "sasrec" is supported; a model of another backbone exits with
status 2 and "not supported by this loader".
"""

import argparse
import json
import math
import struct
import sys

import torch
import torch.nn.functional as F


def read_safetensors(path):
    """(metadata, {name: float32 tensor}) of a safetensors file of F32 tensors."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    data = raw[8 + n :]
    if sys.byteorder != "little":
        sys.exit("this loader reads the little-endian data on little-endian machines only")
    tensors = {}
    for name, h in header.items():
        if h["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} has dtype {h['dtype']}, expected F32")
        a, b = h["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32) if b > a else torch.empty(0)
        tensors[name] = t.reshape(h["shape"])
    return meta, tensors


class SASRec:
    """SASRec as gnno trains it (crates/gnno-train/src/model.rs): item embeddings
    x sqrt(d) plus learned positions counted from the right, pre-LN blocks, a ReLU
    feed-forward, a final LayerNorm. The attention output is added to the
    normalised query (sasrec_residual "query") or to the block's input ("input");
    with sasrec_padding "attended" the history is padded to history_len with zero
    vectors that every position attends to (a causal mask only), zeroed again
    after each block, as FreeRec's SASRec runs it; "masked" attends to the history
    only."""

    def __init__(self, meta, t):
        self.t = t
        self.d = int(meta["dim"])
        self.layers = int(meta["layers"])
        self.heads = int(meta["heads"])
        self.max_len = int(meta["history_len"])
        self.eps = float(meta.get("layer_norm_eps", "1e-05"))
        # Files written before these keys existed have the defaults.
        self.residual = meta.get("sasrec_residual", "query")
        self.padding = meta.get("sasrec_padding", "masked")
        if self.residual not in ("query", "input") or self.padding not in ("masked", "attended"):
            sys.exit(f"unknown SASRec form: residual {self.residual!r}, padding {self.padding!r}")

    def ln(self, x, name):
        return F.layer_norm(x, (self.d,), self.t[name + ".weight"], self.t[name + ".bias"], self.eps)

    def lin(self, x, name):
        return F.linear(x, self.t[name + ".weight"], self.t[name + ".bias"])

    def attention(self, xq, x, name, bias):
        w, dh = x.shape[0], self.d // self.heads
        split = lambda y: y.view(w, self.heads, dh).transpose(0, 1)  # [H, w, dh]
        q, k, v = (split(self.lin(xq, name + ".q")), split(self.lin(x, name + ".k")),
                   split(self.lin(x, name + ".v")))
        att = (q @ k.transpose(-2, -1) * (1.0 / math.sqrt(dh)) + bias).softmax(-1)
        return self.lin((att @ v).transpose(0, 1).reshape(w, self.d), name + ".o")

    def encode(self, hist):
        """The representation after the last item of `hist` (item indices)."""
        h = torch.tensor(hist[-self.max_len :], dtype=torch.long)
        pad = self.max_len - len(h)
        n = pad if self.padding == "attended" else 0
        x = self.t["items.weight"][h] * math.sqrt(self.d) + self.t["pos.weight"][pad:]
        x = torch.cat([torch.zeros(n, self.d), x])  # zero vectors at the padding
        keep = torch.cat([torch.zeros(n, 1), torch.ones(len(h), 1)])
        w = len(x)
        causal = torch.ones(w, w).triu(1) * -1e9  # a position sees itself and the past
        for i in range(self.layers):
            b = f"block{i}"
            q = self.ln(x, b + ".ln1")
            x = (x if self.residual == "input" else q) + self.attention(q, x, b + ".att", causal)
            x = self.ln(x, b + ".ln2")
            x = (x + self.lin(torch.relu(self.lin(x, b + ".ff1")), b + ".ff2")) * keep
        return self.ln(x, "last_ln")[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="model.safetensors of an export run folder")
    ap.add_argument("items", nargs="+", help="the history: raw item ids, oldest first")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--include-history", action="store_true",
                    help="let the history's own items be recommended")
    ap.add_argument("--json", action="store_true", help="print [{item, score}, ...]")
    a = ap.parse_args()
    meta, t = read_safetensors(a.model)
    if meta.get("format") != "gnno-model" or meta.get("format_version") != "1":
        sys.exit(f"{a.model}: not a gnno model file of format version 1")
    if meta["backbone"] != "sasrec":
        print(f"{a.model}: backbone {meta['backbone']} is not supported by this loader "
              "(it rebuilds sasrec only)", file=sys.stderr)
        sys.exit(2)
    raw = json.loads(meta["items"])  # raw id of item row k + 1
    index = {r: k + 1 for k, r in enumerate(raw)}
    unknown = [i for i in a.items if i not in index]
    if unknown:
        print(f"unknown item id(s): {' '.join(unknown)}", file=sys.stderr)
        sys.exit(2)
    hist = [index[i] for i in a.items]
    with torch.no_grad():
        rep = SASRec(meta, t).encode(hist)
        # Candidates are scored with the separate output table when the model has one.
        scores = t.get("out_items.weight", t["items.weight"]) @ rep
    scores[0] = scores[-1] = float("-inf")  # padding and the mask token
    if not a.include_history:
        scores[torch.tensor(hist)] = float("-inf")
    # Highest first, equal scores in item index order (as the export stage ranks).
    order = torch.sort(scores, descending=True, stable=True).indices
    top = [(raw[j - 1], scores[j].item()) for j in order[: a.top].tolist()
           if math.isfinite(scores[j].item())]
    if a.json:
        print(json.dumps([{"item": i, "score": s} for i, s in top]))
    else:
        for rank, (i, s) in enumerate(top, 1):
            print(f"{rank}\t{i}\t{s:.6f}")


if __name__ == "__main__":
    main()

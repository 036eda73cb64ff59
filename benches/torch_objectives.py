"""PyTorch eager reference for the objectives benchmark (benches/stages.rs, section
`objectives`): SASRec as crates/gnno-train builds it (pre-LN queries as the
residual, ReLU feed-forward, final LayerNorm, embeddings scaled by sqrt(d)) trained
on Beauty's sequence rows (one row per user, its last L + 1 train items, every
position trained), with each objective over the same candidates: K uniform random
negatives per row (or, for "<loss>/batch", K shared by the whole batch and scored
by one matrix product, each row masking its own items; for
"sampled-softmax/groups", K per group of B / 32 rows, as the sampled arms train),
H hard negatives per
position (random ids here: the cost, not the values, is measured), and Adam. Prints
one JSON object {loss: positions/s}. "full-softmax/freerec" is full softmax with
FreeRec's block (train.sasrec-residual = "input", sasrec-padding = "attended"): the
attention added to the block's input, padded zero vectors attended as keys.

Usage: python torch_objectives.py BEAUTY_TXT L BATCH K H BATCHES THREADS
The environment variable DEVICE (default "cpu") names the torch device, e.g. "cuda".
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

path, L, B, K, H, BATCHES, THREADS = sys.argv[1], *map(int, sys.argv[2:8])
torch.set_num_threads(THREADS)
torch.manual_seed(1)
dev = torch.device(os.environ.get("DEVICE", "cpu"))
# CUDA runs asynchronously: the clock reads only after the device has finished.
sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
D, BLOCKS, HEADS = 64, 2, 1
GROUPS = 32  # the sampled arms' random-groups (B must be a multiple)

seqs = []
n_items = 0
with open(path) as f:
    for line in f:
        items = [int(x) for x in line.split()[1:]]
        n_items = max(n_items, max(items))
        train = items[:-2]
        if len(train) >= 2:
            seqs.append(train[-(L + 1):])


class Block(nn.Module):
    def __init__(self, freerec):
        super().__init__()
        self.freerec = freerec
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.ff1, self.ff2 = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x, bias):
        b, l, d = x.shape
        split = lambda t: t.view(b, l, HEADS, d // HEADS).transpose(1, 2)
        q = self.ln1(x)
        qq, k, v = split(self.q(q)), split(self.k(x)), split(self.v(x))
        att = (qq @ k.transpose(-2, -1) / (d // HEADS) ** 0.5 + bias).softmax(-1)
        x = (x if self.freerec else q) + self.o((att @ v).transpose(1, 2).reshape(b, l, d))
        x = self.ln2(x)
        return x + self.ff2(F.relu(self.ff1(x)))


class SASRec(nn.Module):
    def __init__(self, freerec=False):
        super().__init__()
        self.freerec = freerec
        self.items = nn.Embedding(n_items + 2, D, padding_idx=0)
        self.pos = nn.Embedding(L, D)
        self.blocks = nn.ModuleList(Block(freerec) for _ in range(BLOCKS))
        self.last = nn.LayerNorm(D)

    def forward(self, h):
        keep = (h != 0).float().unsqueeze(-1)
        x = (self.items(h) * D ** 0.5 + self.pos.weight.unsqueeze(0)) * keep
        bias = torch.triu(torch.ones(L, L, device=h.device), 1)[None, None] * -1e9
        if not self.freerec:
            bias = bias + (h == 0).float()[:, None, None, :] * -1e9
        for blk in self.blocks:
            x = blk(x, bias) * keep
        return self.last(x)


def batch(rows):
    hist = torch.zeros(len(rows), L, dtype=torch.long)
    tgt = torch.zeros(len(rows), L, dtype=torch.long)
    for r, s in enumerate(rows):
        m = len(s) - 1
        hist[r, L - m:] = torch.tensor(s[:-1])
        tgt[r, L - m:] = torch.tensor(s[1:])
    return hist.to(dev), tgt.to(dev), int((tgt > 0).sum())


def loss_of(kind, model, hist, tgt):
    kind, _, scope = kind.partition("/")  # scope: "", "batch", "groups" or "freerec"
    rep_all = model(hist)
    valid = (tgt.view(-1) > 0).nonzero().squeeze(1)  # the one host sync of a step
    rep = rep_all.reshape(-1, D)[valid]
    t = tgt.view(-1)[valid]
    if kind == "full-softmax":
        logits = rep @ model.items.weight.T
        logits[:, 0] = -math.inf
        logits[:, -1] = -math.inf
        return F.cross_entropy(logits, t)
    b = hist.shape[0]
    hard = torch.randint(1, n_items + 1, (b, L, H), device=dev).view(-1, H)[valid]
    pos = (rep * model.items(t)).sum(-1)
    if scope == "batch":
        rand = torch.randint(1, n_items + 1, (K,), device=dev)
        seen = torch.cat([hist, tgt[:, -1:]], 1)  # the row's items
        own = (seen.unsqueeze(2) == rand.view(1, 1, K)).any(1)  # [B, K]
        rs = rep @ model.items(rand).T
        rs = rs.masked_fill(own.unsqueeze(1).expand(-1, L, -1).reshape(-1, K)[valid], -math.inf)
    elif scope == "groups":
        # A draw of K per group of B / GROUPS consecutive rows (random-groups).
        per = b // GROUPS
        rand = torch.randint(1, n_items + 1, (GROUPS, K), device=dev)
        seen = torch.cat([hist, tgt[:, -1:]], 1)
        own = (seen.unsqueeze(2) == rand.repeat_interleave(per, 0).unsqueeze(1)).any(1)  # [B, K]
        rs = (rep_all.reshape(GROUPS, per * L, D) @ model.items(rand).transpose(1, 2)).reshape(-1, K)[valid]
        rs = rs.masked_fill(own.unsqueeze(1).expand(-1, L, -1).reshape(-1, K)[valid], -math.inf)
    else:
        rand = torch.randint(1, n_items + 1, (b, K), device=dev)
        rs = (rep_all @ model.items(rand).transpose(1, 2)).reshape(-1, K)[valid]
    hs = (model.items(hard) * rep.unsqueeze(1)).sum(-1)
    neg = torch.cat([rs, hs], 1)
    if kind == "bpr":
        return -F.logsigmoid(pos.unsqueeze(1) - neg).mean()
    if kind in ("bce", "gbce"):
        alpha = (K + H) / (n_items - 1)
        beta = 1.0 if kind == "bce" else alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha)
        return (-(beta * F.logsigmoid(pos) + F.logsigmoid(-neg).sum(1)) / (1 + K + H)).mean()
    # sampled softmax with the logQ correction (uniform q for both parts)
    corr = math.log((K + H) / n_items)
    logits = torch.cat([pos.unsqueeze(1), neg - corr], 1)
    return (logits.logsumexp(1) - pos).mean()


out = {}
kinds = ["bpr", "bce", "gbce", "sampled-softmax"]
for kind in kinds + [k + "/batch" for k in kinds] + ["sampled-softmax/groups", "full-softmax", "full-softmax/freerec"]:
    model = SASRec(freerec=kind.endswith("/freerec")).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)
    order = torch.randperm(len(seqs), generator=g).tolist()
    batches = [[seqs[i] for i in order[j:j + B]] for j in range(0, B * (BATCHES + 1), B)]

    def step(rows):
        hist, tgt, n = batch(rows)
        loss = loss_of(kind, model, hist, tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return n

    step(batches[0])
    sync()
    t0 = time.time()
    n = sum(step(rows) for rows in batches[1:])
    sync()
    out[kind] = n / (time.time() - t0)
print(json.dumps(out))

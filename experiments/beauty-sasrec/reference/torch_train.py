"""A PyTorch eager SASRec (crates/gnno-train's default block and initialisation, with
dropout) trained on Beauty with one objective, printing dev NDCG@10 (full ranking,
history excluded) after every epoch: the check that tells a fault of the Rust trainer
from a property of the objective (docs/RESULTS.md, BCE and gBCE). Negatives: K uniform
per position. Environment: INIT=torch keeps PyTorch's initialisation (default: N(0,
0.01) weights, zero biases, as the Rust default); BIAS=b adds a learned offset,
starting at b, to every BCE/gBCE logit (b = -ln K mirrors train.bce-offset =
"prior", a fixed offset; Adam at lr 5e-4 moves this one by at most 5e-4 a step).

Usage: torch_train.py BEAUTY_TXT LOSS EPOCHS [K] [DROPOUT] [LR] [THREADS]
  LOSS: bce | gbce | bpr | sampled-softmax | full-softmax
"""
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

path, LOSS, EPOCHS = sys.argv[1], sys.argv[2], int(sys.argv[3])
K = int(sys.argv[4]) if len(sys.argv) > 4 else 256
P = float(sys.argv[5]) if len(sys.argv) > 5 else 0.6
LR = float(sys.argv[6]) if len(sys.argv) > 6 else 5e-4
torch.set_num_threads(int(sys.argv[7]) if len(sys.argv) > 7 else 1)
torch.manual_seed(42)
L, D, BLOCKS, B = 50, 64, 2, 512
users = []
n_items = 0
for line in open(path):
    it = [int(x) for x in line.split()[1:]]
    n_items = max(n_items, max(it))
    users.append(it)
train_rows = [u[:-2][-(L + 1):] for u in users if len(u[:-2]) >= 2]

class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.q, s.k, s.v, s.o = (nn.Linear(D, D) for _ in range(4))
        s.ln1, s.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        s.ff1, s.ff2 = nn.Linear(D, D), nn.Linear(D, D)
    def forward(s, x, bias):
        q = s.ln1(x)
        att = (s.q(q) @ s.k(x).transpose(-2, -1) / D ** 0.5 + bias).softmax(-1)
        att = F.dropout(att, P, s.training)
        x = s.ln2(q + F.dropout(s.o(att @ s.v(x)), P, s.training))
        return x + F.dropout(s.ff2(F.dropout(F.relu(s.ff1(x)), P, s.training)), P, s.training)

class SASRec(nn.Module):
    def __init__(s):
        super().__init__()
        s.items = nn.Embedding(n_items + 2, D, padding_idx=0)
        s.pos = nn.Embedding(L, D)
        s.blocks = nn.ModuleList(Block() for _ in range(BLOCKS))
        s.last = nn.LayerNorm(D)
    def forward(s, h):
        keep = (h != 0).float().unsqueeze(-1)
        x = F.dropout(s.items(h) * D ** 0.5 + s.pos.weight.unsqueeze(0), P, s.training) * keep
        bias = torch.triu(torch.ones(L, L), 1)[None] * -1e9 + (h == 0).float()[:, None, :] * -1e9
        for b in s.blocks:
            x = b(x, bias) * keep
        return s.last(x)

def batch(rows):
    hist = torch.zeros(len(rows), L, dtype=torch.long); tgt = torch.zeros_like(hist)
    for r, s in enumerate(rows):
        m = len(s) - 1
        hist[r, L - m:] = torch.tensor(s[:-1]); tgt[r, L - m:] = torch.tensor(s[1:])
    return hist, tgt

def loss_of(model, hist, tgt):
    rep_all = model(hist)
    valid = tgt.view(-1) > 0
    rep = rep_all.reshape(-1, D)[valid]
    t = tgt.view(-1)[valid]
    W = model.items.weight
    if LOSS == "full-softmax":
        logits = rep @ W.T
        logits[:, 0] = -math.inf; logits[:, -1] = -math.inf
        return F.cross_entropy(logits, t)
    pos = (rep * W[t]).sum(-1)
    rand = torch.randint(1, n_items + 1, (hist.shape[0], L, K)).view(-1, K)[valid]
    neg = (W[rand] * rep.unsqueeze(1)).sum(-1)
    if LOSS in ("bce", "gbce"):
        if BIAS is not None:  # one learned offset for every logit (ranking-invariant)
            pos, neg = pos + BIAS, neg + BIAS
        alpha = K / (n_items - 1)
        beta = 1.0 if LOSS == "bce" else alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha)
        return (-(beta * F.logsigmoid(pos) + F.logsigmoid(-neg).sum(1)) / (1 + K)).mean()
    if LOSS == "bpr":
        return -F.logsigmoid(pos.unsqueeze(1) - neg).mean()
    corr = math.log(K / n_items)
    return (torch.cat([pos.unsqueeze(1), neg - corr], 1).logsumexp(1) - pos).mean()

@torch.no_grad()
def dev_ndcg(model):
    model.eval()
    total, n = 0.0, 0
    for j in range(0, len(users), 1024):
        us = users[j:j + 1024]
        hist = torch.zeros(len(us), L, dtype=torch.long)
        for r, u in enumerate(us):
            h = u[:-2][-L:]
            if h: hist[r, L - len(h):] = torch.tensor(h)
        scores = model(hist)[:, -1] @ model.items.weight.T
        scores[:, 0] = -math.inf; scores[:, -1] = -math.inf
        for r, u in enumerate(us):
            scores[r, torch.tensor(u[:-2], dtype=torch.long)] = -math.inf
        tgt = torch.tensor([u[-2] for u in us])
        ts = scores.gather(1, tgt[:, None])
        rank = (scores > ts).sum(1)
        total += torch.where(rank < 10, 1 / torch.log2(rank.float() + 2), torch.zeros(())).sum().item()
        n += len(us)
    model.train()
    return total / n

model = SASRec()
BIAS = nn.Parameter(torch.tensor(float(os.environ['BIAS']))) if os.environ.get('BIAS') else None
if os.environ.get("INIT", "normal") == "normal":  # crates/gnno-train's default: N(0, 0.01), zero biases
    for n_, p_ in model.named_parameters():
        if p_.dim() == 2: nn.init.normal_(p_, std=0.01)
        elif n_.endswith("bias"): nn.init.zeros_(p_)
    with torch.no_grad(): model.items.weight[0].zero_()
opt = torch.optim.Adam(list(model.parameters()) + ([BIAS] if BIAS is not None else []), lr=LR, weight_decay=1e-8)
g = torch.Generator().manual_seed(3)
for ep in range(EPOCHS):
    t0 = time.time()
    order = torch.randperm(len(train_rows), generator=g).tolist()
    tot = 0.0; nb = 0
    for j in range(0, len(order), B):
        hist, tgt = batch([train_rows[i] for i in order[j:j + B]])
        loss = loss_of(model, hist, tgt)
        opt.zero_grad(); loss.backward(); opt.step()
        tot += loss.item(); nb += 1
    print(f"{LOSS} epoch {ep} loss {tot / nb:.4f} dev NDCG@10 {dev_ndcg(model):.4f} {time.time() - t0:.0f}s", flush=True)

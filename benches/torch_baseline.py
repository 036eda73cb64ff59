"""PyTorch eager reference for the training benchmark (benches/stages.rs, section train).

The same models as crates/gnno-train (post-LN bidirectional encoder with the
ContraRec supervised contrastive term, SASRec, GRU4Rec), the same BPR loss and Adam,
on random batches: prints instances per second. Usage:
  python torch_baseline.py BACKBONE N_ITEMS BATCH CANDIDATES BATCHES GAMMA THREADS
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

backbone, n_items, batch, cands, batches, gamma, threads = sys.argv[1], *map(int, sys.argv[2:5]), int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
torch.set_num_threads(threads)
torch.manual_seed(1)
D, L, H, LAYERS = 64, 20, 2, 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.ff1, self.ff2 = nn.Linear(D, D), nn.Linear(D, D)

    def forward(self, x, bias):
        b, l, d = x.shape
        split = lambda t: t.view(b, l, H, d // H).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = (q @ k.transpose(-2, -1) / (d // H) ** 0.5 + bias).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, l, d)
        x = self.ln1(x + self.o(y))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.items = nn.Embedding(n_items + 2, D, padding_idx=0)
        nn.init.normal_(self.items.weight, std=0.01)
        if backbone == "gru4rec":
            self.gru = nn.GRU(D, D, LAYERS, batch_first=True)
        else:
            self.pos = nn.Embedding(L, D)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))

    def encode(self, h):
        x = self.items(h)
        if backbone == "gru4rec":
            return self.gru(x)[0][:, -1]
        x = x + self.pos.weight.unsqueeze(0)
        bias = (h == 0).float()[:, None, None, :] * -1e9
        if backbone == "sasrec":
            bias = bias + torch.triu(torch.ones(L, L), 1)[None, None] * -1e9
        for blk in self.blocks:
            x = blk(x, bias)
        return x[:, -1]


def supcon(z1, z2, y, t=0.2):
    f = F.normalize(torch.cat([z1, z2]), dim=1)
    y = torch.cat([y, y])
    sim = f @ f.T / t
    eye = torch.eye(len(f), dtype=torch.bool)
    sim = sim.masked_fill(eye, -1e9)
    pos = (y[:, None] == y[None, :]) & ~eye
    logp = sim - sim.logsumexp(1, keepdim=True)
    return -((pos * logp).sum(1) / pos.sum(1).clamp(min=1)).mean()


def augment(h):
    # Mask a Beta(3,3) share of positions (the cheaper of ContraRec's two operators).
    share = torch.distributions.Beta(3.0, 3.0).sample((len(h), 1))
    m = torch.rand(h.shape) < share
    return h.masked_fill(m, n_items + 1)


model = Model()
decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
opt = torch.optim.Adam([{"params": decay, "weight_decay": 1e-6}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)


def step():
    h = torch.randint(1, n_items + 1, (batch, L))
    c = torch.randint(1, n_items + 1, (batch, cands))
    rep = model.encode(h)
    s = (model.items(c) @ rep.unsqueeze(-1)).squeeze(-1)
    loss = -F.logsigmoid(s[:, :1] - s[:, 1:]).mean()
    if backbone == "encoder" and gamma > 0:
        loss = loss + gamma * supcon(model.encode(augment(h)), model.encode(augment(h)), c[:, 0])
    opt.zero_grad()
    loss.backward()
    opt.step()


step()
t0 = time.time()
for _ in range(batches):
    step()
print(f"{batches * batch / (time.time() - t0):.1f}")

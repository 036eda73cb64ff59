//! The backbones (GNNO.md §5): the authors' bidirectional transformer encoder,
//! SASRec (causal transformer) and GRU4Rec. Each maps a left-padded history
//! `[B, L]` (item 0 = padding) to a representation `[B, D]`; scores are dot products
//! with the item embeddings.

use gnno_core::config::{Backbone, TrainSettings};
use tch::nn::{self, Module, RNN};
use tch::{Kind, Tensor};

/// Multi-head self-attention with a key-padding mask and an optional causal mask.
#[derive(Debug)]
struct Attention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    heads: i64,
}

/// A `d → d` linear layer with N(0, 0.01) weights and zero bias.
fn linear(p: &nn::Path, name: &str, d: i64) -> nn::Linear {
    let c = nn::LinearConfig {
        ws_init: normal(),
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p / name, d, d, c)
}

impl Attention {
    fn new(p: &nn::Path, d: i64, heads: i64) -> Self {
        Self {
            q: linear(p, "q", d),
            k: linear(p, "k", d),
            v: linear(p, "v", d),
            o: linear(p, "o", d),
            heads,
        }
    }

    /// `bias`: additive mask `[B or 1, 1, L or 1, L]` (0 keep, -1e9 drop).
    fn forward(&self, x: &Tensor, bias: &Tensor) -> Tensor {
        let (b, l, d) = x.size3().unwrap_or((0, 0, 0));
        let dh = d / self.heads;
        let split = |t: Tensor| t.view([b, l, self.heads, dh]).transpose(1, 2);
        let (q, k, v) = (
            split(self.q.forward(x)),
            split(self.k.forward(x)),
            split(self.v.forward(x)),
        );
        #[expect(clippy::cast_precision_loss, reason = "head size")]
        let scale = 1.0 / (dh as f64).sqrt();
        let att = (q.matmul(&k.transpose(-2, -1)) * scale + bias).softmax(-1, Kind::Float);
        let y = att.matmul(&v).transpose(1, 2).contiguous().view([b, l, d]);
        self.o.forward(&y)
    }
}

fn normal() -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: 0.01,
    }
}

/// A post-LayerNorm transformer block.
#[derive(Debug)]
struct Block {
    att: Attention,
    ln1: nn::LayerNorm,
    ff1: nn::Linear,
    ff2: nn::Linear,
    ln2: nn::LayerNorm,
}

impl Block {
    fn new(p: &nn::Path, d: i64, heads: i64) -> Self {
        Self {
            att: Attention::new(&(p / "att"), d, heads),
            ln1: nn::layer_norm(p / "ln1", vec![d], Default::default()),
            ff1: linear(p, "ff1", d),
            ff2: linear(p, "ff2", d),
            ln2: nn::layer_norm(p / "ln2", vec![d], Default::default()),
        }
    }

    fn forward(&self, x: &Tensor, bias: &Tensor, dropout: f64, train: bool) -> Tensor {
        let a = self.att.forward(x, bias).dropout(dropout, train);
        let x = self.ln1.forward(&(x + a));
        let f = self
            .ff2
            .forward(&self.ff1.forward(&x).gelu("none"))
            .dropout(dropout, train);
        self.ln2.forward(&(x + f))
    }
}

#[derive(Debug)]
enum Body {
    Transformer {
        pos: nn::Embedding,
        blocks: Vec<Block>,
        causal: bool,
    },
    Gru(nn::GRU),
}

/// A sequential recommender: item embeddings plus a backbone.
#[derive(Debug)]
pub struct Model {
    pub items: nn::Embedding,
    body: Body,
    /// Items are 1..=n_items; n_items + 1 is the mask token of the augmentations.
    pub n_items: i64,
    pub max_len: i64,
    dropout: f64,
}

impl Model {
    pub fn new(p: &nn::Path, cfg: &TrainSettings, n_items: u32) -> Self {
        let d = i64::from(cfg.dim);
        let n = i64::from(n_items);
        let emb_cfg = nn::EmbeddingConfig {
            ws_init: normal(),
            padding_idx: 0,
            ..Default::default()
        };
        let items = nn::embedding(p / "items", n + 2, d, emb_cfg);
        tch::no_grad(|| {
            let _ = items.ws.get(0).zero_();
        });
        let max_len = i64::from(cfg.history_len);
        let body = match cfg.backbone {
            Backbone::Encoder | Backbone::Sasrec => {
                let pos = nn::embedding(
                    p / "pos",
                    max_len,
                    d,
                    nn::EmbeddingConfig {
                        ws_init: normal(),
                        ..Default::default()
                    },
                );
                let blocks = (0..cfg.layers)
                    .map(|i| Block::new(&(p / format!("block{i}")), d, i64::from(cfg.heads)))
                    .collect();
                Body::Transformer {
                    pos,
                    blocks,
                    causal: cfg.backbone == Backbone::Sasrec,
                }
            }
            Backbone::Gru4rec => {
                let c = nn::RNNConfig {
                    batch_first: true,
                    num_layers: i64::from(cfg.layers),
                    ..Default::default()
                };
                Body::Gru(nn::gru(p / "gru", d, d, c))
            }
        };
        Self {
            items,
            body,
            n_items: n,
            max_len,
            dropout: cfg.dropout,
        }
    }

    /// Representation of each history: the output at the last position (histories
    /// are left-padded, so the last position is always a real item).
    pub fn encode(&self, hist: &Tensor, train: bool) -> Tensor {
        let x = self.items.forward(hist);
        let l = hist.size()[1];
        match &self.body {
            Body::Transformer {
                pos,
                blocks,
                causal,
            } => {
                let positions = Tensor::arange(l, (Kind::Int64, hist.device()));
                let mut x = (x + pos.forward(&positions).unsqueeze(0)).dropout(self.dropout, train);
                // Key padding: -1e9 (not -inf) so fully padded query rows stay finite.
                let pad = hist.eq(0).to_kind(Kind::Float).unsqueeze(1).unsqueeze(1) * -1e9;
                let bias = if *causal {
                    let tri = Tensor::ones([l, l], (Kind::Float, hist.device())).triu(1) * -1e9;
                    pad + tri.unsqueeze(0).unsqueeze(0)
                } else {
                    pad
                };
                for b in blocks {
                    x = b.forward(&x, &bias, self.dropout, train);
                }
                x.select(1, l - 1)
            }
            Body::Gru(g) => {
                let (out, _) = g.seq(&x);
                out.select(1, l - 1)
            }
        }
    }

    /// Scores of candidate items `[B, C]` for representations `[B, D]`.
    pub fn score(&self, rep: &Tensor, cands: &Tensor) -> Tensor {
        self.items
            .forward(cands)
            .matmul(&rep.unsqueeze(-1))
            .squeeze_dim(-1)
    }

    /// Scores of every item `[B, n_items + 2]` (columns 0 and n+1 are not items).
    pub fn score_all(&self, rep: &Tensor) -> Tensor {
        rep.matmul(&self.items.ws.transpose(0, 1))
    }
}

/// BPR over all negatives: −mean log σ(s⁺ − s⁻). Column 0 of `scores` is the target.
pub fn bpr(scores: &Tensor) -> Tensor {
    let c = scores.size()[1];
    let pos = scores.narrow(1, 0, 1);
    let neg = scores.narrow(1, 1, c - 1);
    -(pos - neg).log_sigmoid().mean(Kind::Float)
}

/// Supervised contrastive loss over two views: rows with the same target are
/// positives (ContraRec's context-context term).
///
/// Only the log-sum-exp needs the full `[2B, 2B]` similarity matrix; the positive
/// part uses per-target sums of the features, Σ_{j∈P(i)} f_i·f_j = f_i·(S_{y_i} − f_i),
/// so no `[2B, 2B]` mask or product is ever built.
pub fn supcon(z1: &Tensor, z2: &Tensor, targets: &Tensor, temperature: f64) -> Tensor {
    let f = Tensor::cat(&[z1, z2], 0);
    let f = &f
        / f.norm_scalaropt_dim(2, [1i64].as_slice(), true)
            .clamp_min(1e-12);
    let n = f.size()[0];
    let dev = f.device();
    let mut sim = f.matmul(&f.transpose(0, 1)) / temperature;
    let eye = Tensor::eye(n, (Kind::Bool, dev));
    let _ = sim.masked_fill_(&eye, -1e9);
    let lse = sim.logsumexp([1i64].as_slice(), false);
    let labels = Tensor::cat(&[targets, targets], 0);
    // Dense ids of the targets in this batch, per-target feature sums and counts.
    let (uniq, inverse, counts) = labels.unique_dim(0, false, true, true);
    let _ = uniq;
    let d = f.size()[1];
    let sums = Tensor::zeros([counts.size()[0], d], (f.kind(), dev)).index_add(0, &inverse, &f);
    let pos_dot =
        ((sums.index_select(0, &inverse) - &f) * &f).sum_dim_intlist(1i64, false, Kind::Float)
            / temperature;
    let n_pos = (counts.index_select(0, &inverse) - 1).to_kind(Kind::Float);
    // mean over positives of (sim_ij − lse_i) = pos_dot_i / n_pos_i − lse_i.
    let per = -(pos_dot / &n_pos - lse);
    per.mean(Kind::Float)
}

//! The backbones (GNNO.md §5): the authors' bidirectional transformer encoder,
//! SASRec (causal transformer) and GRU4Rec. Each maps a left-padded history
//! `[B, L]` (item 0 = padding) to representations `[B, L, D]` (the causal ones: the
//! state after each position) or, for ranking, the last position's `[B, D]`; scores
//! are dot products with the item embeddings.
//!
//! SASRec follows Kang and McAuley (2018) as the field trains it: item embeddings
//! scaled by √d plus learned positions, pre-LayerNorm queries with the normalised
//! query as the residual, a ReLU feed-forward, padding zeroed after each block and a
//! final LayerNorm. The encoder keeps the authors' post-LN blocks with GELU.

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

    /// Queries from `xq`, keys and values from `x`. `bias`: additive mask
    /// `[B or 1, 1, L or 1, L]` (0 keep, -1e9 drop); `dropout` on the attention weights.
    fn forward(&self, xq: &Tensor, x: &Tensor, bias: &Tensor, dropout: f64, train: bool) -> Tensor {
        let (b, l, d) = x.size3().unwrap_or((0, 0, 0));
        let dh = d / self.heads;
        let split = |t: Tensor| t.view([b, l, self.heads, dh]).transpose(1, 2);
        let (q, k, v) = (
            split(self.q.forward(xq)),
            split(self.k.forward(x)),
            split(self.v.forward(x)),
        );
        #[expect(clippy::cast_precision_loss, reason = "head size")]
        let scale = 1.0 / (dh as f64).sqrt();
        let att = (q.matmul(&k.transpose(-2, -1)) * scale + bias)
            .softmax(-1, Kind::Float)
            .dropout(dropout, train);
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

    /// The authors' post-LN block (GELU feed-forward).
    fn forward(&self, x: &Tensor, bias: &Tensor, dropout: f64, train: bool) -> Tensor {
        let a = self
            .att
            .forward(x, x, bias, 0.0, false)
            .dropout(dropout, train);
        let x = self.ln1.forward(&(x + a));
        let f = self
            .ff2
            .forward(&self.ff1.forward(&x).gelu("none"))
            .dropout(dropout, train);
        self.ln2.forward(&(x + f))
    }

    /// SASRec's block: normalised queries (also the residual), attention over the
    /// unnormalised sequence, then LayerNorm and a ReLU feed-forward with a residual.
    fn forward_sasrec(&self, x: &Tensor, bias: &Tensor, dropout: f64, train: bool) -> Tensor {
        let q = self.ln1.forward(x);
        let x = &q + self.att.forward(&q, x, bias, dropout, train);
        let x = self.ln2.forward(&x);
        let f = self
            .ff2
            .forward(&self.ff1.forward(&x).dropout(dropout, train).relu())
            .dropout(dropout, train);
        x + f
    }
}

#[derive(Debug)]
enum Body {
    /// The authors' bidirectional encoder.
    Encoder {
        pos: nn::Embedding,
        blocks: Vec<Block>,
    },
    Sasrec {
        pos: nn::Embedding,
        blocks: Vec<Block>,
        last_ln: nn::LayerNorm,
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
        let pos = || {
            nn::embedding(
                p / "pos",
                max_len,
                d,
                nn::EmbeddingConfig {
                    ws_init: normal(),
                    ..Default::default()
                },
            )
        };
        let blocks = || -> Vec<Block> {
            (0..cfg.layers)
                .map(|i| Block::new(&(p / format!("block{i}")), d, i64::from(cfg.heads)))
                .collect()
        };
        let body = match cfg.backbone {
            Backbone::Encoder => Body::Encoder {
                pos: pos(),
                blocks: blocks(),
            },
            Backbone::Sasrec => Body::Sasrec {
                pos: pos(),
                blocks: blocks(),
                last_ln: nn::layer_norm(p / "last_ln", vec![d], Default::default()),
            },
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

    /// Whether position t's state depends on positions ≤ t only, so one forward
    /// pass trains every position of a sequence.
    pub fn is_causal(&self) -> bool {
        !matches!(self.body, Body::Encoder { .. })
    }

    /// Whether a batch may drop leading all-padding columns without changing any
    /// output at a real item: true for the transformers (padding is masked and
    /// positions count from the right), false for the GRU (its state runs through
    /// the padding).
    pub fn trims_padding(&self) -> bool {
        !matches!(self.body, Body::Gru(_))
    }

    /// Position ids of a left-padded input of width `w` ≤ L: counted so that the
    /// last column is always position L − 1, whatever the width.
    fn positions(&self, w: i64, dev: tch::Device) -> Tensor {
        Tensor::arange_start(self.max_len - w, self.max_len, (Kind::Int64, dev))
    }

    /// Representation of each history: the output at the last position (histories
    /// are left-padded, so the last position is always a real item).
    pub fn encode(&self, hist: &Tensor, train: bool) -> Tensor {
        let l = hist.size()[1];
        self.encode_all(hist, train).select(1, l - 1)
    }

    /// The output at every position `[B, L, D]`.
    pub fn encode_all(&self, hist: &Tensor, train: bool) -> Tensor {
        let x = self.items.forward(hist);
        let l = hist.size()[1];
        let dev = hist.device();
        // Key padding: -1e9 (not -inf) so fully padded query rows stay finite.
        let pad = || hist.eq(0).to_kind(Kind::Float).unsqueeze(1).unsqueeze(1) * -1e9;
        match &self.body {
            Body::Encoder { pos, blocks } => {
                let positions = self.positions(l, dev);
                let mut x = (x + pos.forward(&positions).unsqueeze(0)).dropout(self.dropout, train);
                let bias = pad();
                for b in blocks {
                    x = b.forward(&x, &bias, self.dropout, train);
                }
                x
            }
            Body::Sasrec {
                pos,
                blocks,
                last_ln,
            } => {
                let positions = self.positions(l, dev);
                #[expect(clippy::cast_precision_loss, reason = "embedding size")]
                let scale = (self.items.ws.size()[1] as f64).sqrt();
                let keep = hist.ne(0).to_kind(Kind::Float).unsqueeze(-1);
                let mut x = ((x * scale + pos.forward(&positions).unsqueeze(0))
                    .dropout(self.dropout, train))
                    * &keep;
                let tri = Tensor::ones([l, l], (Kind::Float, dev)).triu(1) * -1e9;
                let bias = pad() + tri.unsqueeze(0).unsqueeze(0);
                for b in blocks {
                    x = b.forward_sasrec(&x, &bias, self.dropout, train) * &keep;
                }
                last_ln.forward(&x)
            }
            Body::Gru(g) => g.seq(&x).0,
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

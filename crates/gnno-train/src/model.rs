//! The backbones (GNNO.md §5): the authors' bidirectional transformer encoder,
//! SASRec (causal transformer) and GRU4Rec. Each maps a left-padded history
//! `[B, L]` (item 0 = padding) to representations `[B, L, D]` (the causal ones: the
//! state after each position) or, for ranking, the last position's `[B, D]`; scores
//! are dot products with the item embeddings.
//!
//! SASRec follows Kang and McAuley (2018) as the field trains it: item embeddings
//! scaled by √d plus learned positions, pre-LayerNorm queries with the normalised
//! query as the residual, a ReLU feed-forward and a final LayerNorm. Every layer
//! but attention runs on the batch's real positions only (`Packing`), which is the
//! same model as zeroing the padding after each block, at the cost of the real
//! positions. The encoder keeps the authors' post-LN blocks with GELU.

use gnno_core::config::{
    Backbone, OutputEmbedding, SasrecInit, SasrecPadding, SasrecResidual, TrainSettings,
};
use tch::nn::{self, Module, RNN};
use tch::{Device, Kind, Tensor};

use crate::dropout::Dropout;

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
    linear_init(p, name, d, normal(), nn::Init::Const(0.0))
}

fn linear_init(p: &nn::Path, name: &str, d: i64, ws: nn::Init, bs: nn::Init) -> nn::Linear {
    let c = nn::LinearConfig {
        ws_init: ws,
        bs_init: Some(bs),
        bias: true,
    };
    nn::linear(p / name, d, d, c)
}

/// U(−b, b).
fn uniform(b: f64) -> nn::Init {
    nn::Init::Uniform { lo: -b, up: b }
}

/// Xavier-normal for a `fan_out × fan_in` weight.
#[expect(clippy::cast_precision_loss, reason = "layer sizes")]
fn xavier_normal(fan_in: i64, fan_out: i64) -> nn::Init {
    nn::Init::Randn {
        mean: 0.0,
        stdev: (2.0 / (fan_in + fan_out) as f64).sqrt(),
    }
}

impl Attention {
    fn new(p: &nn::Path, d: i64, heads: i64, init: SasrecInit) -> Self {
        // Xavier: PyTorch's MultiheadAttention, Xavier-uniform over the stacked
        // 3d × d projection, Xavier-normal output (a Linear), zero biases.
        #[expect(clippy::cast_precision_loss, reason = "layer sizes")]
        let (qkv, o) = match init {
            SasrecInit::Normal => (normal(), normal()),
            SasrecInit::Xavier => (uniform((6.0 / (4 * d) as f64).sqrt()), xavier_normal(d, d)),
        };
        let lin = |name: &str, ws| linear_init(p, name, d, ws, nn::Init::Const(0.0));
        Self {
            q: lin("q", qkv),
            k: lin("k", qkv),
            v: lin("v", qkv),
            o: lin("o", o),
            heads,
        }
    }

    /// Queries from `xq`, keys and values from `x`. `bias`: additive mask
    /// `[B or 1, 1, L or 1, L]` (0 keep, -1e9 drop); `drop` on the attention weights.
    fn forward(
        &self,
        xq: &Tensor,
        x: &Tensor,
        bias: &Tensor,
        drop: Option<&Dropout>,
        train: bool,
    ) -> Tensor {
        let y = self.attend(
            &self.q.forward(xq),
            &self.k.forward(x),
            &self.v.forward(x),
            bias,
            drop,
            train,
        );
        self.o.forward(&y)
    }

    /// Attention on packed rows `[T, D]` in `layout`'s order: each chunk of rows
    /// attends in its own padded `[b, w]` layout; the projections run once over
    /// all T positions.
    fn forward_chunks(
        &self,
        xq: &Tensor,
        x: &Tensor,
        layout: &Layout,
        drop: Option<&Dropout>,
        train: bool,
    ) -> Tensor {
        let (q, k, v) = (self.q.forward(xq), self.k.forward(x), self.v.forward(x));
        let ys: Vec<Tensor> = layout
            .chunks
            .iter()
            .map(|c| {
                let part = |t: &Tensor| t.narrow(0, c.start, c.len);
                let p = c.packing();
                let (k, v) = match &c.slots {
                    None => (p.pad(&part(&k)), p.pad(&part(&v))),
                    Some(s) => (s.pad(&part(&k), &self.k), s.pad(&part(&v), &self.v)),
                };
                p.pack(&self.attend(&p.pad(&part(&q)), &k, &v, &c.bias, drop, train))
            })
            .collect();
        let y = match ys.as_slice() {
            [one] => one.shallow_clone(),
            _ => Tensor::cat(&ys, 0),
        };
        self.o.forward(&y)
    }

    /// Multi-head attention of projected queries `q` `[B, L, D]` over keys and
    /// values `k`, `v` `[B, L', D]`, before the output projection.
    fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        drop: Option<&Dropout>,
        train: bool,
    ) -> Tensor {
        let (b, l, d) = q.size3().unwrap_or((0, 0, 0));
        let dh = d / self.heads;
        let split = |t: &Tensor| t.view([b, -1, self.heads, dh]).transpose(1, 2);
        #[expect(clippy::cast_precision_loss, reason = "head size")]
        let scale = 1.0 / (dh as f64).sqrt();
        let att =
            (split(q).matmul(&split(k).transpose(-2, -1)) * scale + bias).softmax(-1, Kind::Float);
        let att = match drop {
            Some(d) => d.apply(att, train),
            None => att,
        };
        att.matmul(&split(v))
            .transpose(1, 2)
            .contiguous()
            .view([b, l, d])
    }
}

/// `sasrec-padding = "attended"`: implementations that pad every history to L
/// with zero vectors and mask causally only let each query attend to a row's n
/// padding slots; a zero vector's key and value are the projections' biases
/// b_k, b_v, so the n slots act as one key b_k with weight n·exp(q·b_k/√d_h) and
/// value b_v. Keys and values get one leading column holding b_k and b_v, and the
/// attention bias gives it ln n (−1e9 for a full row). Dropout then drops the n
/// slots' weight together rather than each slot (the same expectation).
struct SlotColumn {
    /// Where the packed rows, then each row's slot column, go in `B × (L + 1)`.
    idx: Tensor,
    b: i64,
    l: i64,
}

impl SlotColumn {
    fn new(p: &Packing) -> Self {
        let dev = p.idx.device();
        let shifted = p.idx + p.idx.floor_divide_scalar(p.l) + 1;
        let starts = Tensor::arange(p.b, (Kind::Int64, dev)) * (p.l + 1);
        Self {
            idx: Tensor::cat(&[shifted, starts], 0),
            b: p.b,
            l: p.l,
        }
    }

    /// Packed keys or values `[T, D]` of `lin` → `[B, L + 1, D]`: the slot column
    /// (`lin`'s bias), then the padded layout.
    fn pad(&self, x: &Tensor, lin: &nn::Linear) -> Tensor {
        let d = x.size()[1];
        let slot = lin.bs.as_ref().map_or_else(
            || Tensor::zeros([1, d], (x.kind(), x.device())),
            |b| b.view([1, d]),
        );
        let rows = Tensor::cat(&[x, &slot.expand([self.b, d], false)], 0);
        Tensor::zeros([self.b * (self.l + 1), d], (x.kind(), x.device()))
            .index_copy(0, &self.idx, &rows)
            .view([self.b, self.l + 1, d])
    }
}

/// Rows `idx` of an item table, shaped `idx`'s shape + `[D]`, for indices that are
/// items or masked out of the loss. On the CPU by `index_select`, whose backward is
/// one `index_add` into the table's gradient: libtorch's CPU embedding backward
/// runs an add per index, 2.6x slower at 27,000 indices (a batch's hard
/// negatives), one thread. The padding row 0 (zeroed when the table is built)
/// reads zeros either way. The embedding keeps its gradient out of row 0; here a
/// padded index sends it the zero gradient of a masked candidate, so row 0 stays
/// zero (a test holds it). Elsewhere libtorch's embedding.
pub(crate) fn rows(table: &nn::Embedding, idx: &Tensor) -> Tensor {
    if table.ws.device() != Device::Cpu {
        return table.forward(idx);
    }
    let mut shape = idx.size();
    shape.push(table.ws.size()[1]);
    table
        .ws
        .index_select(0, &idx.reshape([-1]))
        .view(shape.as_slice())
}

/// The real positions of a left-padded `[B, L]` batch, for layers that run on
/// them only: `idx` are their flat indices into `B × L`, in row-major order.
pub(crate) struct Packing<'a> {
    pub(crate) idx: &'a Tensor,
    pub(crate) b: i64,
    pub(crate) l: i64,
}

impl Packing<'_> {
    /// `[T, D]` → `[B, L, D]`, zeros at the padding.
    pub(crate) fn pad(&self, x: &Tensor) -> Tensor {
        let d = x.size()[1];
        Tensor::zeros([self.b * self.l, d], (x.kind(), x.device()))
            .index_copy(0, self.idx, x)
            .view([self.b, self.l, d])
    }

    /// `[B, L, D]` → `[T, D]`.
    fn pack(&self, x: &Tensor) -> Tensor {
        let d = x.size()[2];
        x.reshape([-1, d]).index_select(0, self.idx)
    }
}

/// Below this many attention elements' worth of work a further chunk is not
/// worth its extra ops (`chunk_plan`). A round guess, not tuned: on a random
/// Beauty batch it gives 4 chunks, 7.6x less work by count than one, and 2^14
/// would give 7 with a fifth less again.
const CHUNK_OVERHEAD: usize = 1 << 16;

/// How SASRec's attention sees a batch: its rows in chunks, each chunk's rows
/// left-padded to the chunk's longest. Attention is the one layer that needs the
/// padded layout, at `b × w²` scores for `b` rows of width `w`; a random batch at
/// L = 50 is mostly padding (one long row sets the width), while rows of similar
/// length trimmed to their longest cost about what their items cost. Every other
/// layer runs on the packed positions, in the chunks' order.
struct Layout {
    chunks: Vec<Chunk>,
    /// Item and position ids of the packed positions, in the chunks' order.
    items: Tensor,
    positions: Tensor,
    /// The chunks' order → the caller's (`Packing::idx`) order; None when they agree.
    back: Option<Tensor>,
}

/// `b` rows of width `w` with real positions `idx` (flat into `b × w`, row-major),
/// which are `start..start + len` of the layout's packed positions.
struct Chunk {
    idx: Tensor,
    b: i64,
    w: i64,
    start: i64,
    len: i64,
    /// Additive attention mask `[b, 1, w, w]` (`[b, 1, w, w + 1]` with slots).
    bias: Tensor,
    slots: Option<SlotColumn>,
}

impl Chunk {
    fn packing(&self) -> Packing<'_> {
        Packing {
            idx: &self.idx,
            b: self.b,
            l: self.w,
        }
    }
}

/// Rows (indices into `spans`) grouped into chunks, each with its width, for rows
/// whose items span `spans[r]` columns (0: no item, in no chunk): rows sorted by
/// span, cut where the attention work `rows × w × (w + d)` plus `overhead` per
/// chunk is least (exact, by dynamic programming over the distinct spans).
pub(crate) fn chunk_plan(spans: &[usize], d: usize, overhead: usize) -> Vec<(usize, Vec<usize>)> {
    let mut rows: Vec<usize> = (0..spans.len()).filter(|&r| spans[r] > 0).collect();
    rows.sort_by_key(|&r| (spans[r], r));
    // Distinct spans, and how many rows come before each (`upto[j]`) and up to
    // the last (`upto[m]`).
    let mut widths: Vec<usize> = Vec::new();
    let mut upto: Vec<usize> = Vec::new();
    for (i, &r) in rows.iter().enumerate() {
        if widths.last() != Some(&spans[r]) {
            widths.push(spans[r]);
            upto.push(i);
        }
    }
    upto.push(rows.len());
    // best[j]: the least work for the rows of the first j widths; from[j]: where
    // its last chunk starts.
    let m = widths.len();
    let (mut best, mut from) = (vec![0usize; m + 1], vec![0usize; m + 1]);
    for j in 1..=m {
        let w = widths[j - 1];
        let (cost, i) = (1..=j)
            .map(|i| {
                let n = upto[j] - upto[i - 1];
                (best[i - 1] + n * w * (w + d) + overhead, i)
            })
            .min()
            .unwrap_or((0, j));
        best[j] = cost;
        from[j] = i;
    }
    let mut plan = Vec::new();
    let mut j = m;
    while j > 0 {
        let i = from[j];
        plan.push((widths[j - 1], rows[upto[i - 1]..upto[j]].to_vec()));
        j = i - 1;
    }
    plan.reverse();
    plan
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
    fn new(p: &nn::Path, d: i64, heads: i64, init: SasrecInit) -> Self {
        let ff = |name: &str| match init {
            SasrecInit::Normal => linear(p, name, d),
            SasrecInit::Xavier => {
                // PyTorch's default for a Linear / kernel-1 Conv1d: U(±1/√fan_in).
                #[expect(clippy::cast_precision_loss, reason = "layer sizes")]
                let b = 1.0 / (d as f64).sqrt();
                linear_init(p, name, d, uniform(b), uniform(b))
            }
        };
        Self {
            att: Attention::new(&(p / "att"), d, heads, init),
            ln1: nn::layer_norm(p / "ln1", vec![d], Default::default()),
            ff1: ff("ff1"),
            ff2: ff("ff2"),
            ln2: nn::layer_norm(p / "ln2", vec![d], Default::default()),
        }
    }

    /// The authors' post-LN block (GELU feed-forward).
    fn forward(&self, x: &Tensor, bias: &Tensor, drop: &Dropout, train: bool) -> Tensor {
        let a = drop.apply(self.att.forward(x, x, bias, None, false), train);
        let x = self.ln1.forward(&(x + a));
        let f = drop.apply(self.ff2.forward(&self.ff1.forward(&x).gelu("none")), train);
        self.ln2.forward(&(x + f))
    }

    /// SASRec's block on packed rows `[T, D]` (in `layout`'s order): normalised
    /// queries, attention over the unnormalised sequence added to the normalised
    /// query (`Query`) or to the block's input (`Input`), then LayerNorm and a ReLU
    /// feed-forward with a residual.
    fn forward_sasrec(
        &self,
        x: &Tensor,
        layout: &Layout,
        residual: SasrecResidual,
        drop: &Dropout,
        train: bool,
    ) -> Tensor {
        let q = self.ln1.forward(x);
        let a = self.att.forward_chunks(&q, x, layout, Some(drop), train);
        let x = match residual {
            SasrecResidual::Query => q + a,
            SasrecResidual::Input => x + a,
        };
        let x = self.ln2.forward(&x);
        let h = drop.apply(self.ff1.forward(&x), train).relu();
        x + drop.apply(self.ff2.forward(&h), train)
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
    /// The table that scores candidates when `train.output-embedding = "separate"`
    /// (padding row 0 kept at zero as in `items`); None: `items` scores them.
    out: Option<nn::Embedding>,
    body: Body,
    /// Items are 1..=n_items; n_items + 1 is the mask token of the augmentations.
    pub n_items: i64,
    pub max_len: i64,
    drop: Dropout,
    residual: SasrecResidual,
    padding: SasrecPadding,
    /// SASRec: the fixed cost of a further attention chunk (`chunk_plan`),
    /// `CHUNK_OVERHEAD`; None: one chunk, the batch's own width. Chunks are cut on
    /// the CPU only: on a GPU a step is bound by kernel launches, not by the
    /// padding's work, and the batch stays one chunk whatever this holds.
    chunk_overhead: Option<usize>,
}

impl Model {
    pub fn new(p: &nn::Path, cfg: &TrainSettings, n_items: u32) -> Self {
        let d = i64::from(cfg.dim);
        let n = i64::from(n_items);
        let max_len = i64::from(cfg.history_len);
        let init = |rows: i64| match cfg.sasrec_init {
            SasrecInit::Normal => normal(),
            SasrecInit::Xavier => xavier_normal(d, rows),
        };
        // One row per item, row 0 the padding (kept at zero), row n + 1 the mask token.
        let item_table = |name: &str| {
            let t = nn::embedding(
                p / name,
                n + 2,
                d,
                nn::EmbeddingConfig {
                    ws_init: init(n + 2),
                    padding_idx: 0,
                    ..Default::default()
                },
            );
            tch::no_grad(|| {
                let _ = t.ws.get(0).zero_();
            });
            t
        };
        let items = item_table("items");
        let out =
            (cfg.output_embedding == OutputEmbedding::Separate).then(|| item_table("out_items"));
        let pos = || {
            nn::embedding(
                p / "pos",
                max_len,
                d,
                nn::EmbeddingConfig {
                    ws_init: init(max_len),
                    ..Default::default()
                },
            )
        };
        let blocks = || -> Vec<Block> {
            (0..cfg.layers)
                .map(|i| {
                    let heads = i64::from(cfg.heads);
                    Block::new(&(p / format!("block{i}")), d, heads, cfg.sasrec_init)
                })
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
            out,
            body,
            n_items: n,
            max_len,
            drop: Dropout::new(cfg.dropout),
            residual: cfg.sasrec_residual,
            padding: cfg.sasrec_padding,
            chunk_overhead: Some(CHUNK_OVERHEAD),
        }
    }

    /// Restarts the dropout masks' stream on the CPU (the trainer: with each
    /// epoch's seed, so a resumed run draws what an uninterrupted one draws).
    pub(crate) fn reseed_dropout(&self, seed: u64) {
        self.drop.reseed(seed);
    }

    /// The work one more chunk of rows costs (`chunk_plan`), when rows are cut
    /// into chunks by length on this device; None: never.
    pub(crate) fn chunk_overhead(&self, device: Device) -> Option<usize> {
        self.chunk_overhead.filter(|_| device == Device::Cpu)
    }

    /// This model with rows cut into chunks at `overhead` (None: never).
    #[cfg(test)]
    pub(crate) fn with_chunk_overhead(self, overhead: Option<usize>) -> Self {
        Self {
            chunk_overhead: overhead,
            ..self
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

    /// The output at every position `[B, L, D]` (SASRec: zeros at the padding).
    pub fn encode_all(&self, hist: &Tensor, train: bool) -> Tensor {
        let l = hist.size()[1];
        let dev = hist.device();
        match &self.body {
            Body::Encoder { pos, blocks } => {
                let x = self.items.forward(hist);
                let bias = key_padding(hist);
                let positions = self.positions(l, dev);
                let mut x = self
                    .drop
                    .apply(x + pos.forward(&positions).unsqueeze(0), train);
                for b in blocks {
                    x = b.forward(&x, &bias, &self.drop, train);
                }
                x
            }
            Body::Sasrec {
                pos,
                blocks,
                last_ln,
            } => {
                let idx = hist.view([-1]).ne(0).nonzero().squeeze_dim(1);
                let p = Packing {
                    idx: &idx,
                    b: hist.size()[0],
                    l,
                };
                p.pad(&self.sasrec(pos, blocks, last_ln, hist, &p, train))
            }
            Body::Gru(g) => g.seq(&self.items.forward(hist)).0,
        }
    }

    /// The output at the real positions `idx` of `hist` `[T, D]` (flat indices into
    /// `B × L` of its items ≠ 0, in row-major order), for SASRec; None for the
    /// other backbones.
    pub fn encode_real(&self, hist: &Tensor, idx: &Tensor, train: bool) -> Option<Tensor> {
        let Body::Sasrec {
            pos,
            blocks,
            last_ln,
        } = &self.body
        else {
            return None;
        };
        let p = Packing {
            idx,
            b: hist.size()[0],
            l: hist.size()[1],
        };
        Some(self.sasrec(pos, blocks, last_ln, hist, &p, train))
    }

    /// SASRec on the real positions of `hist` `[T, D]`: embeddings, layer norms,
    /// projections, feed-forward layers and dropout run on those T positions only,
    /// and only attention sees a padded layout (padded keys masked), a chunk of
    /// rows of similar length at a time on the CPU (`Layout`), so at a random
    /// batch's L = 50, where most of the batch is padding, a step costs about what
    /// its real positions cost.
    fn sasrec(
        &self,
        pos: &nn::Embedding,
        blocks: &[Block],
        last_ln: &nn::LayerNorm,
        hist: &Tensor,
        p: &Packing,
        train: bool,
    ) -> Tensor {
        let layout = self.layout(hist, p);
        #[expect(clippy::cast_precision_loss, reason = "embedding size")]
        let scale = (self.items.ws.size()[1] as f64).sqrt();
        let items = rows(&self.items, &layout.items);
        let mut x = self
            .drop
            .apply(items * scale + pos.forward(&layout.positions), train);
        for blk in blocks {
            x = blk.forward_sasrec(&x, &layout, self.residual, &self.drop, train);
        }
        let x = last_ln.forward(&x);
        match &layout.back {
            Some(back) => x.index_select(0, back),
            None => x,
        }
    }

    /// The attention layout of `hist` `[B, L]` with real positions `p.idx`: on the
    /// CPU rows in chunks by `chunk_plan`, else (or when one chunk is best) one
    /// chunk of the whole batch in the caller's order.
    fn layout(&self, hist: &Tensor, p: &Packing) -> Layout {
        let one = || Layout {
            chunks: vec![self.chunk(hist, p.idx.shallow_clone(), 0)],
            items: hist.view([-1]).index_select(0, p.idx),
            // Positions count from the right: the last column is L − 1 whatever
            // the width.
            positions: p.idx.remainder(p.l) + (self.max_len - p.l),
            back: None,
        };
        let Some(overhead) = self.chunk_overhead.filter(|_| hist.device() == Device::Cpu) else {
            return one();
        };
        let Ok(h) = Vec::<i64>::try_from(hist.reshape([-1])) else {
            return one();
        };
        let l = usize::try_from(p.l).unwrap_or(0);
        let d = usize::try_from(self.items.ws.size()[1]).unwrap_or(0);
        // A row's items span from its first item to the end (left-padded).
        let spans: Vec<usize> = h
            .chunks(l.max(1))
            .map(|r| r.iter().position(|&i| i != 0).map_or(0, |f| l - f))
            .collect();
        let plan = chunk_plan(&spans, d, overhead);
        if plan.len() <= 1 {
            return one();
        }
        // Each real position's place in the caller's order: the caller's index
        // decides, and unless it is exactly the items ≠ 0 (as every caller's is)
        // the batch stays one chunk, the form that follows it whatever it holds.
        let Ok(given) = Vec::<i64>::try_from(p.idx) else {
            return one();
        };
        let mut rank = vec![-1i64; h.len()];
        for (r, &f) in (0i64..).zip(&given) {
            match usize::try_from(f)
                .ok()
                .filter(|&f| h.get(f).is_some_and(|&i| i != 0))
            {
                Some(f) => rank[f] = r,
                None => return one(),
            }
        }
        let (mut chunks, mut items, mut positions, mut order) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (w, rows) in plan {
            let start = i64::try_from(items.len()).unwrap_or(0);
            let (mut cols, mut idx) = (Vec::with_capacity(rows.len() * w), Vec::new());
            for &row in &rows {
                let first = row * l + (l - w);
                for (f, &item) in (first..).zip(&h[first..(row + 1) * l]) {
                    if item != 0 {
                        if rank[f] < 0 {
                            return one(); // an item the caller's index left out
                        }
                        let col = f - first;
                        idx.push(i64::try_from(cols.len()).unwrap_or(0));
                        items.push(item);
                        positions.push(self.max_len - i64::try_from(w - col).unwrap_or(0));
                        order.push(rank[f]);
                    }
                    cols.push(item);
                }
            }
            let rows = i64::try_from(rows.len()).unwrap_or(0);
            let ch = Tensor::from_slice(&cols).view([rows, -1]);
            chunks.push(self.chunk(&ch, Tensor::from_slice(&idx), start));
        }
        if order.len() != given.len() {
            return one(); // the caller's index names a position twice
        }
        let mut back = vec![0i64; order.len()];
        for (k, &o) in (0i64..).zip(&order) {
            back[usize::try_from(o).unwrap_or(0)] = k;
        }
        Layout {
            chunks,
            items: Tensor::from_slice(&items),
            positions: Tensor::from_slice(&positions),
            back: Some(Tensor::from_slice(&back)),
        }
    }

    /// One chunk of rows `hist` `[b, w]` with real positions `idx`, at `start` of
    /// the packed positions: its attention bias (key padding and the causal mask;
    /// with `sasrec-padding = "attended"` the slot column of ln(padding slots up
    /// to L), −1e9 for a full row).
    fn chunk(&self, hist: &Tensor, idx: Tensor, start: i64) -> Chunk {
        let (b, w) = (hist.size()[0], hist.size()[1]);
        let tri = Tensor::ones([w, w], (Kind::Float, hist.device())).triu(1) * -1e9;
        let bias = key_padding(hist) + tri.unsqueeze(0).unsqueeze(0);
        let mut c = Chunk {
            len: idx.size()[0],
            idx,
            b,
            w,
            start,
            bias,
            slots: None,
        };
        if matches!(self.padding, SasrecPadding::Attended) {
            #[expect(clippy::cast_precision_loss, reason = "history length")]
            let l_max = self.max_len as f64;
            let n = hist.ne(0).sum_dim_intlist(1, false, Kind::Float).neg() + l_max;
            let ln_n = n.clamp_min(1.0).log().masked_fill(&n.lt(0.5), -1e9);
            let col = ln_n.view([-1, 1, 1, 1]).expand([b, 1, w, 1], false);
            c.bias = Tensor::cat(&[col, c.bias], -1);
            c.slots = Some(SlotColumn::new(&c.packing()));
        }
        c
    }

    /// The table candidates are scored with: `items`, or the separate output table.
    pub fn out_items(&self) -> &nn::Embedding {
        self.out.as_ref().unwrap_or(&self.items)
    }

    /// Scores of candidate items `[B, C]` for representations `[B, D]`.
    pub fn score(&self, rep: &Tensor, cands: &Tensor) -> Tensor {
        self.out_items()
            .forward(cands)
            .matmul(&rep.unsqueeze(-1))
            .squeeze_dim(-1)
    }

    /// Scores of every item `[B, n_items + 2]` (columns 0 and n+1 are not items).
    pub fn score_all(&self, rep: &Tensor) -> Tensor {
        rep.matmul(&self.out_items().ws.transpose(0, 1))
    }
}

/// Additive key-padding mask `[B, 1, 1, L]` of a left-padded batch: -1e9 (not
/// -inf) at the padding, so fully padded query rows stay finite.
fn key_padding(hist: &Tensor) -> Tensor {
    hist.eq(0).to_kind(Kind::Float).unsqueeze(1).unsqueeze(1) * -1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sasrec() -> (nn::VarStore, Model) {
        sasrec_with(|_| {})
    }

    fn sasrec_with(f: impl FnOnce(&mut TrainSettings)) -> (nn::VarStore, Model) {
        tch::manual_seed(3);
        let mut cfg = crate::tests::settings();
        cfg.backbone = Backbone::Sasrec;
        cfg.history_len = 6;
        cfg.dim = 8;
        cfg.heads = 2;
        f(&mut cfg);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let m = Model::new(&vs.root(), &cfg, 20);
        // Non-trivial LayerNorm and bias values, so a wrong layout cannot pass.
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let noise = v.randn_like() * 0.3;
                let _ = v.g_add_(&noise);
            }
        });
        (vs, m)
    }

    /// SASRec on the whole padded `[B, L, D]` layout, the padding zeroed after the
    /// embeddings and after each block (Kang and McAuley's form), without dropout;
    /// with `sasrec-padding = "attended"` the padded zero vectors are keys like any
    /// other (a causal mask only), as the common implementations run it.
    fn padded_reference(m: &Model, hist: &Tensor) -> Tensor {
        let Body::Sasrec {
            pos,
            blocks,
            last_ln,
        } = &m.body
        else {
            unreachable!()
        };
        let l = hist.size()[1];
        let keep = hist.ne(0).to_kind(Kind::Float).unsqueeze(-1);
        let positions = m.positions(l, hist.device());
        let mut x = (m.items.forward(hist) * 8f64.sqrt() // dim 8
            + pos.forward(&positions).unsqueeze(0))
            * &keep;
        let tri = Tensor::ones([l, l], (Kind::Float, hist.device())).triu(1) * -1e9;
        let bias = match m.padding {
            SasrecPadding::Masked => key_padding(hist) + tri.unsqueeze(0).unsqueeze(0),
            SasrecPadding::Attended => tri.unsqueeze(0).unsqueeze(0),
        };
        for b in blocks {
            let q = b.ln1.forward(&x);
            let a = b.att.forward(&q, &x, &bias, None, false);
            let y = match m.residual {
                SasrecResidual::Query => &q + a,
                SasrecResidual::Input => &x + a,
            };
            let y = b.ln2.forward(&y);
            x = (&y + b.ff2.forward(&b.ff1.forward(&y).relu())) * &keep;
        }
        last_ln.forward(&x)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    fn assert_close(a: &Tensor, b: &Tensor) {
        let d = max_diff(a, b);
        assert!(d < 1e-5, "max difference {d}");
    }

    /// Flat indices of the items ≠ 0 of `hist`.
    fn real(hist: &Tensor) -> Tensor {
        hist.view([-1]).ne(0).nonzero().squeeze_dim(1)
    }

    /// The same model with its attention in as many chunks as its rows have spans.
    fn chunked((vs, m): (nn::VarStore, Model)) -> (nn::VarStore, Model) {
        let m = Model {
            chunk_overhead: Some(0),
            ..m
        };
        (vs, m)
    }

    #[test]
    fn chunk_plan_cuts_where_the_work_is_least() {
        // Spans 0 (no item: in no chunk), 1, 1, 2, 6 at d = 2.
        let spans = [2, 0, 1, 6, 1];
        // Overhead 0: a chunk per span, rows sorted by span, then by row.
        assert_eq!(
            chunk_plan(&spans, 2, 0),
            vec![(1, vec![2, 4]), (2, vec![0]), (6, vec![3])]
        );
        // Overhead 10: {1, 1, 2} at width 2 costs 3·2·4 + 10 = 34 against
        // 2·1·3 + 10 + 1·2·4 + 10 = 34 for two chunks (a tie: the longer first
        // chunk wins), and the row of span 6 alone (6·8 + 10 = 58) against one
        // chunk of all (4·6·8 + 10 = 202).
        assert_eq!(
            chunk_plan(&spans, 2, 10),
            vec![(2, vec![2, 4, 0]), (6, vec![3])]
        );
        // A large overhead: one chunk at the longest span.
        assert_eq!(chunk_plan(&spans, 2, 1000), vec![(6, vec![2, 4, 0, 3])]);
        assert!(chunk_plan(&[0, 0], 2, 0).is_empty());
    }

    #[test]
    fn sasrec_on_real_positions_equals_the_padded_form() {
        for (_vs, m) in [sasrec(), chunked(sasrec())] {
            sasrec_equals_the_padded_form(&m);
        }
    }

    fn sasrec_equals_the_padded_form(m: &Model) {
        let hist =
            Tensor::from_slice(&[0i64, 0, 3, 4, 5, 0, 0, 0, 0, 7, 1, 2, 3, 4, 5]).view([3, 5]);
        let idx = real(&hist);
        // Spans 3, 2 and 5: three chunks when each costs nothing, else one.
        let p = Packing {
            idx: &idx,
            b: 3,
            l: 5,
        };
        let chunks = m.layout(&hist, &p).chunks.len();
        assert_eq!(chunks, if m.chunk_overhead == Some(0) { 3 } else { 1 });
        let want = padded_reference(m, &hist)
            .view([15, -1])
            .index_select(0, &idx);
        let got = m.encode_real(&hist, &idx, false).expect("SASRec");
        assert_eq!(got.size(), vec![9, 8]);
        assert_close(&got, &want);
        // encode_all: the same at the real positions, zeros at the padding.
        let all = m.encode_all(&hist, false);
        assert_eq!(all.size(), vec![3, 5, 8]);
        assert_close(&all.view([15, -1]).index_select(0, &idx), &want);
        assert_eq!(
            all.get(0).get(0).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
        // Wider padding changes nothing at the real positions (trimming is exact).
        let wide = Tensor::cat(
            &[
                Tensor::zeros([3, 1], (Kind::Int64, tch::Device::Cpu)),
                hist.shallow_clone(),
            ],
            1,
        );
        let last = |h: &Tensor| m.encode(h, false);
        assert_close(&last(&wide), &last(&hist));
    }

    #[test]
    fn chunks_of_several_rows_equal_the_padded_form() {
        // Width 6, spans 2, 0 (no item), 6, 1, 4, 5, 2: at d = 8 and a cost of 20
        // per chunk, three chunks of widths 2, 5 and 6 holding 3, 2 and 1 rows, in
        // an order other than the batch's.
        let rows: [[i64; 6]; 7] = [
            [0, 0, 0, 0, 3, 4],
            [0; 6],
            [1, 2, 3, 4, 5, 6],
            [0, 0, 0, 0, 0, 7],
            [0, 0, 5, 9, 6, 7],
            [0, 9, 8, 1, 2, 3],
            [0, 0, 0, 0, 8, 2],
        ];
        let want_plan = vec![(2, vec![3, 0, 6]), (5, vec![4, 5]), (6, vec![2])];
        assert_eq!(chunk_plan(&[2, 0, 6, 1, 4, 5, 2], 8, 20), want_plan);
        let freerec = |c: &mut TrainSettings| {
            c.sasrec_residual = SasrecResidual::Input;
            c.sasrec_padding = SasrecPadding::Attended;
        };
        for (_vs, m) in [sasrec(), sasrec_with(freerec)] {
            let m = Model {
                chunk_overhead: Some(20),
                ..m
            };
            let mut flat: Vec<i64> = rows.iter().flatten().copied().collect();
            // Masked padding also takes a row with a gap (its zero a masked key);
            // attended padding counts slots, not gaps, so it is left to the rows.
            if matches!(m.padding, SasrecPadding::Masked) {
                flat.extend([0, 3, 0, 5, 6, 7]);
            }
            let b = i64::try_from(flat.len() / 6).expect("rows");
            let hist = Tensor::from_slice(&flat).view([b, 6]);
            let idx = real(&hist);
            let p = Packing { idx: &idx, b, l: 6 };
            assert_eq!(m.layout(&hist, &p).chunks.len(), 3);
            let t = idx.size()[0];
            let want = padded_reference(&m, &hist)
                .view([b * 6, -1])
                .index_select(0, &idx);
            let got = m.encode_real(&hist, &idx, false).expect("SASRec");
            assert_eq!(got.size(), vec![t, 8]);
            assert_close(&got, &want);
            let all = m.encode_all(&hist, false).view([b * 6, -1]);
            assert_close(&all.index_select(0, &idx), &want);
            let pad = hist.view([-1]).eq(0).nonzero().squeeze_dim(1);
            assert_eq!(all.index_select(0, &pad).abs().max().double_value(&[]), 0.0);
            // An index other than the items ≠ 0 (here without the last one) is
            // followed as given: one chunk, the caller's positions.
            let fewer = idx.narrow(0, 0, t - 1);
            let q = Packing {
                idx: &fewer,
                b,
                l: 6,
            };
            assert_eq!(m.layout(&hist, &q).chunks.len(), 1);
        }
    }

    #[test]
    fn sasrec_outputs_do_not_depend_on_later_items() {
        // Not through a reference that builds the same mask: change the items after
        // position 3 and the outputs up to it stay, for both padding forms.
        let attended = |c: &mut TrainSettings| {
            c.sasrec_residual = SasrecResidual::Input;
            c.sasrec_padding = SasrecPadding::Attended;
        };
        for (_vs, m) in [sasrec(), sasrec_with(attended)] {
            let a = Tensor::from_slice(&[0i64, 2, 3, 4, 5, 6]).view([1, 6]);
            let b = Tensor::from_slice(&[0i64, 2, 3, 4, 9, 1]).view([1, 6]);
            let (oa, ob) = (m.encode_all(&a, false), m.encode_all(&b, false));
            assert!(max_diff(&oa.narrow(1, 0, 4), &ob.narrow(1, 0, 4)) < 1e-6);
            assert!(max_diff(&oa.narrow(1, 4, 2), &ob.narrow(1, 4, 2)) > 1e-3);
            // And an earlier item does change what follows it.
            let c = Tensor::from_slice(&[0i64, 7, 3, 4, 5, 6]).view([1, 6]);
            let oc = m.encode_all(&c, false);
            assert!(max_diff(&oa.narrow(1, 5, 1), &oc.narrow(1, 5, 1)) > 1e-3);
        }
    }

    #[test]
    fn sasrec_with_attended_padding_equals_zero_vectors_as_keys() {
        let freerec = |c: &mut TrainSettings| {
            c.sasrec_residual = SasrecResidual::Input;
            c.sasrec_padding = SasrecPadding::Attended;
            c.sasrec_init = SasrecInit::Xavier;
        };
        for (_vs, m) in [sasrec_with(freerec), chunked(sasrec_with(freerec))] {
            attended_padding_equals_zero_vectors_as_keys(m);
        }
    }

    fn attended_padding_equals_zero_vectors_as_keys(m: Model) {
        // The reference pads to the full L = 6; the model sees the same width and a
        // trimmed width 5: padding slots count up to L either way.
        let full = Tensor::from_slice(&[
            0i64, 0, 0, 3, 4, 5, 0, 0, 0, 0, 0, 7, 0, 1, 2, 3, 4, 5, 9, 8, 1, 2, 3, 4,
        ])
        .view([4, 6]);
        let idx6 = real(&full);
        let want = padded_reference(&m, &full)
            .view([24, -1])
            .index_select(0, &idx6);
        let got6 = m.encode_real(&full, &idx6, false).expect("SASRec");
        assert_eq!(got6.size(), vec![15, 8]);
        assert_close(&got6, &want);
        // The first three rows (9 items) at width 5.
        let trimmed = full.narrow(0, 0, 3).narrow(1, 1, 5).contiguous();
        let got5 = m
            .encode_real(&trimmed, &real(&trimmed), false)
            .expect("SASRec");
        assert_close(&got5, &want.narrow(0, 0, 9));
        // The padding matters: masking it gives other outputs for the short rows,
        // and the same for the full row (no padding slot).
        let masked = Model {
            padding: SasrecPadding::Masked,
            ..m
        };
        let other = masked.encode_real(&full, &idx6, false).expect("SASRec");
        assert!(max_diff(&other.narrow(0, 0, 4), &want.narrow(0, 0, 4)) > 1e-3);
        assert_close(&other.narrow(0, 9, 6), &want.narrow(0, 9, 6));
    }

    #[test]
    fn a_separate_output_table_scores_the_candidates() {
        let (vs, tied) = sasrec();
        assert!(std::ptr::eq(tied.out_items(), &tied.items));
        assert!(!vs.variables().contains_key("out_items.weight"));
        // As built: a table of its own, its padding row at zero as in `items`.
        let mut cfg = crate::tests::settings();
        cfg.output_embedding = OutputEmbedding::Separate;
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let m = Model::new(&vs.root(), &cfg, 6);
        let out = &vs.variables()["out_items.weight"];
        assert_eq!(out.size(), vec![8, i64::from(cfg.dim)]);
        assert_eq!(out.get(0).abs().max().double_value(&[]), 0.0);
        assert!(max_diff(out, &m.items.ws) > 1e-3, "a table of its own");
        // It scores the candidates, all of them and a chosen few alike.
        let (vs, m) = sasrec_with(|c| c.output_embedding = OutputEmbedding::Separate);
        let out = &vs.variables()["out_items.weight"];
        let hist = Tensor::from_slice(&[0i64, 0, 1, 2, 3, 4, 5, 6, 2, 9, 11, 12]).view([2, 6]);
        let rep = m.encode(&hist, false);
        let all = m.score_all(&rep);
        assert_close(&all, &rep.matmul(&out.transpose(0, 1)));
        assert!(max_diff(&all, &rep.matmul(&m.items.ws.transpose(0, 1))) > 1e-4);
        let cands = Tensor::from_slice(&[3i64, 6, 1, 2]).view([2, 2]);
        assert_close(&m.score(&rep, &cands), &all.gather(1, &cands, false));
    }

    #[test]
    fn xavier_init_has_pytorch_scales() {
        tch::manual_seed(3);
        let mut cfg = crate::tests::settings();
        cfg.backbone = Backbone::Sasrec;
        cfg.history_len = 50;
        cfg.dim = 64;
        cfg.heads = 1;
        cfg.sasrec_init = SasrecInit::Xavier;
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let m = Model::new(&vs.root(), &cfg, 12_000);
        let Body::Sasrec { pos, blocks, .. } = &m.body else {
            unreachable!()
        };
        let sd = |t: &Tensor| t.std(true).double_value(&[]);
        let absmax = |t: &Tensor| t.abs().max().double_value(&[]);
        // Embeddings: Xavier-normal, sd √(2 / (rows + 64)).
        let want = (2.0f64 / (12_002.0 + 64.0)).sqrt();
        assert!((sd(&m.items.ws.narrow(0, 1, 12_001)) / want - 1.0).abs() < 0.02);
        assert_eq!(absmax(&m.items.ws.get(0)), 0.0);
        let want = (2.0f64 / (50.0 + 64.0)).sqrt();
        assert!((sd(&pos.ws) / want - 1.0).abs() < 0.05);
        // q/k/v: U(±√(6 / 256)); output: sd 1/8; feed-forward: U(±1/8), biases too.
        let att = &blocks[0].att;
        let b = (6.0f64 / 256.0).sqrt();
        assert!(absmax(&att.q.ws) <= b && absmax(&att.q.ws) > 0.9 * b);
        assert!((sd(&att.o.ws) / 0.125 - 1.0).abs() < 0.1);
        assert_eq!(absmax(att.k.bs.as_ref().expect("bias")), 0.0);
        let ff = &blocks[0].ff1;
        assert!(absmax(&ff.ws) <= 0.125 && absmax(&ff.ws) > 0.11);
        assert!(absmax(ff.bs.as_ref().expect("bias")) > 0.05);
    }
}

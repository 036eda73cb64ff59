//! pipeline.toml: raw TOML is read in one pass that collects every problem (unknown
//! keys, wrong types, values out of range) with its key path, then compiled into the
//! typed settings below. Every key has a default, listed in docs/CONFIG.md.

use crate::error::{Error, Result};
use serde::Serialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Config {
    pub run: RunSettings,
    pub ingest: IngestSettings,
    pub graph: GraphSettings,
    pub negatives: NegativesSettings,
    pub train: TrainSettings,
    pub evaluate: EvaluateSettings,
    pub export: ExportSettings,
    /// `[gates.<stage>]`: bounds on a stage's figures, checked before it publishes.
    pub gates: Vec<Gate>,
    /// The folder relative paths are resolved against (for a loaded file: the folder
    /// it is named in, canonical); the ingest inputs, globs resolved at each run, too.
    #[serde(skip)]
    pub folder: PathBuf,
}

/// One bound set on one figure of one stage (`[gates.ingest] rows = { min = 1000 }`).
/// `max-drop` and `max-rise` are fractions relative to the figure of the stage's
/// currently published (last accepted) run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Gate {
    pub stage: String,
    pub figure: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_drop: Option<f64>,
    pub max_rise: Option<f64>,
}

/// The figures each stage offers to gates and to `gnno history` (besides the
/// evaluate stage's `dev.<metric>` and `test.<metric>` for every metric of
/// `evaluate.ks`). The stages compute them from their reports (src/stages).
pub const STAGE_FIGURES: [(&str, &[&str]); 6] = [
    (
        "ingest",
        &[
            "rows",
            "rows-read",
            "users",
            "items",
            "bad-rows",
            "bad-row-share",
            "train-rows",
            "dev-rows",
            "test-rows",
        ],
    ),
    ("graph", &["edges", "pairs", "items-with-edges"]),
    ("negatives", &["negatives", "leakage"]),
    ("train", &["best-dev", "epochs"]),
    ("evaluate", &["users"]),
    ("export", &["users", "items"]),
];

/// Is `figure` a figure of `stage` under these evaluation cut-offs?
pub fn is_stage_figure(stage: &str, figure: &str, ks: &[u32]) -> bool {
    if stage == "evaluate" {
        if let Some((split, metric)) = figure.split_once('.') {
            return matches!(split, "dev" | "test")
                && parse_metric(metric).is_some_and(|(_, k)| ks.contains(&k));
        }
    }
    STAGE_FIGURES
        .iter()
        .any(|(s, figs)| *s == stage && figs.contains(&figure))
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSettings {
    /// Where every stage writes; relative paths are taken from the config file's folder.
    pub workdir: PathBuf,
    pub seed: u64,
    /// Threads for rayon, polars and libtorch alike; 0 = all cores.
    pub threads: usize,
    pub device: String,
    /// Published runs kept per stage (the current one included), for rollback.
    pub keep_runs: u32,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum InputFormat {
    Delimited,
    Jsonl,
    Sequences,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TimeFormat {
    /// Integer (or decimal) seconds, or an ISO-8601 date/time; decided per value.
    Auto,
    Unix,
    Iso,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BadRowPolicy {
    Error,
    Skip,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SplitMode {
    LeaveOneOut,
    TimeCutoff,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ShortUsers {
    /// Users with fewer than 3 interactions keep them all in train and are not evaluated.
    Train,
    /// Users with fewer than 3 interactions are dropped.
    Drop,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IngestSettings {
    /// Files or glob patterns, relative to the config file's folder.
    pub inputs: Vec<String>,
    pub format: InputFormat,
    pub separator: String,
    pub header: bool,
    /// Column names when the file has no header.
    pub columns: Vec<String>,
    pub user_col: String,
    pub item_col: String,
    /// Empty: no timestamp column; the row order is the time order.
    pub time_col: String,
    /// Empty: no rating column.
    pub rating_col: String,
    pub time_format: TimeFormat,
    pub on_bad_row: BadRowPolicy,
    pub dedup_pairs: bool,
    pub min_rating: Option<f64>,
    pub user_core: u32,
    pub item_core: u32,
    pub split: SplitMode,
    pub dev_from: Option<i64>,
    pub test_from: Option<i64>,
    pub short_users: ShortUsers,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum OverlapKind {
    Jaccard,
    Weighted,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GraphSettings {
    pub hops: u32,
    pub overlap: OverlapKind,
    pub min_overlap: f64,
    /// 0 = unlimited.
    pub max_neighbors: u32,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SamplerKind {
    Gnno,
    Uniform,
    Popularity,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NegativesSettings {
    pub sampler: SamplerKind,
    pub n_hard: u32,
    pub temperature: f64,
    pub warmup: u32,
    pub pace: f64,
    pub max_hardness: f64,
    pub exclude_history: bool,
    /// Each row's hard negatives distinct: drawn one after another, each from the
    /// distribution with the row's earlier draws removed (successive sampling
    /// without replacement; GNNO.md §4 draws with replacement). Left out of the
    /// serialised form at its default (false), so older configs keep their keys.
    #[serde(skip_serializing_if = "is_false")]
    pub distinct: bool,
    pub popularity_alpha: f64,
    pub shard_rows: u32,
    pub row_group_rows: u32,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Backbone {
    Encoder,
    Sasrec,
    Gru4rec,
}

/// The training objective (docs/CONFIG.md, `train.loss`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// −mean log σ(s⁺ − s⁻) over every negative (the paper's objective).
    Bpr,
    /// Binary cross-entropy: the target against each negative.
    Bce,
    /// gSASRec's generalised BCE (the positive's probability raised to β).
    Gbce,
    /// Cross-entropy over the target and the sampled negatives.
    SampledSoftmax,
    /// Cross-entropy over every item.
    FullSoftmax,
}

/// Where the random negatives of a batch come from.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RandomNegatives {
    Uniform,
    /// ∝ train count^`random-alpha`.
    Popularity,
}

/// Which positions share a draw of random negatives.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RandomScope {
    /// Each row (user or instance) draws its own `n-random`, outside its history.
    Row,
    /// One draw of `n-random` per batch (or per each of `random-groups` groups of
    /// the batch's rows), scored by every position of the batch (group) in one
    /// matrix product; a row masks the drawn items of its own history.
    Batch,
    /// Each trained position draws its own `n-random` over all items from the
    /// batch's stream and masks its user's history (the field's sampled
    /// cross-entropy, e.g. Xu et al.'s: K fresh negatives per position), scored by
    /// a gather of `[M, K]` item rows, the costliest scope.
    Position,
    /// `random-groups` draws per batch as with `Batch`, but dealt to the trained
    /// positions in turn (position m, in row-major order, takes draw m mod G), so
    /// a user's positions fall in different draws and each draw serves positions
    /// of many users; each position masks its user's history. The scoring cost of
    /// `Batch` with as many groups.
    Interleaved,
}

fn is_one_f64(x: &f64) -> bool {
    *x == 1.0
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// What SASRec's attention adds its output to (docs/CONFIG.md, `train.sasrec-residual`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SasrecResidual {
    /// The LayerNormed query (Kang and McAuley's code).
    #[default]
    Query,
    /// The block's unnormalised input (a pre-LN residual stream, as FreeRec's SASRec).
    Input,
}

/// What SASRec's attention does with the padding of a left-padded history
/// (docs/CONFIG.md, `train.sasrec-padding`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SasrecPadding {
    /// Padded keys are masked out.
    #[default]
    Masked,
    /// Each padded slot up to `history-len` is a key and value of its own, as in
    /// the common implementations that pad to `history-len` with zero vectors and
    /// mask causally only: its key and value are the projections' biases.
    Attended,
}

/// Which table scores the candidate items (docs/CONFIG.md, `train.output-embedding`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OutputEmbedding {
    /// The input item embeddings (SASRec's and the field's usual choice).
    #[default]
    Tied,
    /// A table of its own, as gSASRec's default.
    Separate,
}

/// A constant added to every BCE and gBCE logit (docs/CONFIG.md, `train.bce-offset`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BceOffset {
    /// The model's scores are the logits (gSASRec's form).
    #[default]
    None,
    /// −ln n⁻ with n⁻ the negatives per position: the log prior odds that a
    /// candidate is the positive, so an untrained model already gives each
    /// candidate σ = 1 / (1 + n⁻) without bending its embeddings to get there.
    Prior,
}

/// How SASRec's weights start (docs/CONFIG.md, `train.sasrec-init`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SasrecInit {
    /// Every weight N(0, 0.01), biases 0.
    #[default]
    Normal,
    /// PyTorch's: Xavier-normal embeddings and attention output, Xavier-uniform
    /// query/key/value projections (as one 3d × d matrix), the default
    /// Kaiming-uniform feed-forward with uniform biases.
    Xavier,
}

/// How an epoch's rows are grouped into batches.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Batching {
    /// A seeded permutation of all rows, cut into batches.
    Random,
    /// Rows of similar length share a batch (random among equal lengths, batches
    /// in a random order), so a batch pads only to its longest row.
    Length,
}

/// Which sampled logits of the sampled softmax get the logQ correction.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LogQ {
    Off,
    /// The random negatives only (the hard ones keep their full weight).
    Random,
    /// Random and hard negatives (the hard ones with the probability stored in the shards).
    All,
    /// The hard negatives as an exact stratum: each distinct one counted once, as in
    /// the full softmax, and the random draws, logQ-corrected, estimate the rest
    /// (a draw that is one of the position's hard negatives is masked).
    Stratified,
}

/// Where training starts from (docs/CONFIG.md, `train.warm-start`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum WarmStart {
    /// A fresh, seeded initialisation.
    Off,
    /// The model of the last accepted export (`<workdir>/current`), carried over
    /// to the current item index by raw id; cold when there is none yet.
    LastAccepted,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrainSettings {
    pub backbone: Backbone,
    pub loss: Loss,
    pub random_negatives: RandomNegatives,
    pub random_scope: RandomScope,
    /// `random-scope = "batch"`: the batch's rows are cut into this many groups of
    /// consecutive rows, each with its own draw. Left out of the serialised form at
    /// its default, so configs written before it existed keep their stage keys.
    #[serde(skip_serializing_if = "is_one")]
    pub random_groups: u32,
    pub random_alpha: f64,
    pub logq: LogQ,
    /// `sampled-softmax`: every negative's exp(score) weighted by w (its logit + ln w,
    /// after any logQ correction); Xu et al.'s scaled cross-entropy (SCE) is
    /// `logq = "off"` with w = α. Left out of the serialised form at its default, so
    /// configs written before it existed keep their stage keys.
    #[serde(skip_serializing_if = "is_one_f64")]
    pub negative_weight: f64,
    /// `sampled-softmax`: every item of a row's own window (its inputs and its last
    /// target) but the position's target is an exact negative of each position,
    /// with weight 1 and no correction, as those items sit in the full softmax's
    /// normaliser; the random negatives keep masking them. Left out of the
    /// serialised form at its default (false), so older configs keep their keys.
    #[serde(skip_serializing_if = "is_false")]
    pub history_negatives: bool,
    /// `sampled-softmax`: the P items most often a training target (ties by index)
    /// are an exact stratum of every position's negatives, each counted once with
    /// weight 1 and no correction, except where it is the position's target, one
    /// of its user's train items (the random negatives' rule) or one of its hard
    /// negatives (counted there); random draws of them are masked, so the random
    /// part estimates the items outside the head. 0 = none. Left out of the
    /// serialised form at 0, so older configs keep their keys.
    #[serde(skip_serializing_if = "is_zero")]
    pub head_negatives: u32,
    /// gBCE calibration t ∈ [0, 1] (0 = plain BCE, 1 = fully calibrated).
    pub gbce_t: f64,
    /// Left out of the serialised form at its default, so configs written before
    /// it existed keep their stage keys.
    #[serde(skip_serializing_if = "is_default")]
    pub bce_offset: BceOffset,
    /// Dev metric that picks the best epoch and drives early stopping, e.g. `NDCG@10`.
    pub early_stop_metric: String,
    pub batching: Batching,
    /// Epochs drawn by the negatives stage and trained at most.
    pub epochs: u32,
    pub history_len: u32,
    pub dim: u32,
    pub layers: u32,
    pub heads: u32,
    pub dropout: f64,
    /// SASRec's block and initialisation; left out of the serialised form at
    /// their defaults, so configs written before them keep their stage keys.
    #[serde(skip_serializing_if = "is_default")]
    pub sasrec_residual: SasrecResidual,
    #[serde(skip_serializing_if = "is_default")]
    pub sasrec_padding: SasrecPadding,
    #[serde(skip_serializing_if = "is_default")]
    pub sasrec_init: SasrecInit,
    /// Left out of the serialised form at its default, as the keys above.
    #[serde(skip_serializing_if = "is_default")]
    pub output_embedding: OutputEmbedding,
    /// Weight of the contrastive term (encoder only); 0 = plain BPR.
    pub gamma: f64,
    pub cl_temperature: f64,
    pub n_random: u32,
    pub batch_size: u32,
    pub lr: f64,
    pub weight_decay: f64,
    pub patience: u32,
    pub warm_start: WarmStart,
    /// Maximum epochs of a warm-started run; 0 = `epochs`.
    pub warm_start_epochs: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvaluateSettings {
    pub ks: Vec<u32>,
    /// Remove the user's own history from the full ranking.
    pub exclude_history: bool,
    /// Negatives per user in the sampled protocol; 0 turns it off.
    pub sampled_negatives: u32,
    pub batch_size: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportSettings {
    /// Recommendations per user.
    pub top_k: u32,
    /// Never recommend an item of the user's own sequence.
    pub exclude_history: bool,
    /// The users file as written in the config (raw user ids, one per line);
    /// None = every user.
    pub users: Option<String>,
    /// Users scored per batch (memory only).
    pub batch_size: u32,
    /// `users` resolved against the config file's folder.
    #[serde(skip)]
    pub users_path: Option<PathBuf>,
}

/// `HR@K` / `NDCG@K` as (is NDCG, K).
pub fn parse_metric(m: &str) -> Option<(bool, u32)> {
    let (name, k) = m.split_once('@')?;
    let k: u32 = k.parse().ok().filter(|&k| k > 0)?;
    match name {
        "HR" => Some((false, k)),
        "NDCG" => Some((true, k)),
        _ => None,
    }
}

/// Collects problems while reading one table.
struct Section<'a> {
    path: String,
    table: Option<&'a Table>,
    used: BTreeSet<String>,
    problems: &'a mut Vec<String>,
}

impl<'a> Section<'a> {
    fn new(root: &'a Table, name: &str, problems: &'a mut Vec<String>) -> Self {
        let table = match root.get(name) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(_) => {
                problems.push(format!("{name}: expected a table ([{name}])"));
                None
            }
        };
        Self {
            path: name.to_owned(),
            table,
            used: BTreeSet::new(),
            problems,
        }
    }

    fn raw(&mut self, key: &str) -> Option<&'a Value> {
        self.used.insert(key.to_owned());
        self.table.and_then(|t| t.get(key))
    }

    fn bad(&mut self, key: &str, msg: impl std::fmt::Display) {
        self.problems.push(format!("{}.{key}: {msg}", self.path));
    }

    fn int(&mut self, key: &str, default: i64, min: i64, max: i64) -> i64 {
        match self.raw(key) {
            None => default,
            Some(Value::Integer(v)) if (min..=max).contains(v) => *v,
            Some(Value::Integer(v)) => {
                self.bad(key, format!("{v} is out of range {min}..={max}"));
                default
            }
            Some(v) => {
                self.bad(key, format!("expected an integer, found {}", v.type_str()));
                default
            }
        }
    }

    fn uint(&mut self, key: &str, default: u32, min: u32, max: u32) -> u32 {
        u32::try_from(self.int(key, i64::from(default), i64::from(min), i64::from(max)))
            .unwrap_or(default)
    }

    fn opt_int(&mut self, key: &str) -> Option<i64> {
        match self.raw(key) {
            None => None,
            Some(Value::Integer(v)) => Some(*v),
            Some(v) => {
                self.bad(key, format!("expected an integer, found {}", v.type_str()));
                None
            }
        }
    }

    fn float(&mut self, key: &str, default: f64, min: f64, max: f64) -> f64 {
        let v = match self.raw(key) {
            None => return default,
            Some(Value::Float(v)) => *v,
            #[expect(clippy::cast_precision_loss, reason = "config integers are small")]
            Some(Value::Integer(v)) => *v as f64,
            Some(v) => {
                self.bad(key, format!("expected a number, found {}", v.type_str()));
                return default;
            }
        };
        if v.is_finite() && v >= min && v <= max {
            v
        } else {
            self.bad(key, format!("{v} is out of range {min}..={max}"));
            default
        }
    }

    fn opt_float(&mut self, key: &str) -> Option<f64> {
        match self.raw(key) {
            None => None,
            Some(Value::Float(v)) => Some(*v),
            #[expect(clippy::cast_precision_loss, reason = "config integers are small")]
            Some(Value::Integer(v)) => Some(*v as f64),
            Some(v) => {
                self.bad(key, format!("expected a number, found {}", v.type_str()));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, default: bool) -> bool {
        match self.raw(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(v) => {
                self.bad(
                    key,
                    format!("expected true or false, found {}", v.type_str()),
                );
                default
            }
        }
    }

    fn string(&mut self, key: &str, default: &str) -> String {
        match self.raw(key) {
            None => default.to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                self.bad(key, format!("expected a string, found {}", v.type_str()));
                default.to_owned()
            }
        }
    }

    fn choice<T: Copy>(&mut self, key: &str, default: T, options: &[(&str, T)]) -> T {
        let Some(raw) = self.raw(key) else {
            return default;
        };
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        if let Value::String(s) = raw {
            if let Some((_, v)) = options.iter().find(|(n, _)| n == s) {
                return *v;
            }
        }
        self.bad(
            key,
            format!("expected one of {}, found {raw}", names.join(" | ")),
        );
        default
    }

    fn list<T>(&mut self, key: &str, default: Vec<T>, f: impl Fn(&Value) -> Option<T>) -> Vec<T> {
        match self.raw(key) {
            None => default,
            Some(Value::Array(a)) => {
                let mut out = Vec::with_capacity(a.len());
                for (i, v) in a.iter().enumerate() {
                    match f(v) {
                        Some(x) => out.push(x),
                        None => self.bad(&format!("{key}[{i}]"), format!("unexpected value {v}")),
                    }
                }
                out
            }
            Some(v) => {
                self.bad(key, format!("expected an array, found {}", v.type_str()));
                default
            }
        }
    }

    fn finish(self) {
        if let Some(t) = self.table {
            for k in t.keys() {
                if !self.used.contains(k) {
                    self.problems
                        .push(format!("{}.{k}: unknown key", self.path));
                }
            }
        }
    }
}

/// The folder relative paths in a config file are resolved against: the folder
/// the file is named in, made absolute with symlinks resolved, so the same file
/// named as `pipeline.toml`, `./pipeline.toml` or by its full path gives the same
/// input paths (which the ingest stage's manifest records). A config that is
/// itself a link keeps resolving against the link's folder, not its target's.
fn config_folder(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

impl Config {
    /// Read and validate a config file; relative paths are resolved against its folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => Error::Config {
                file: Some(path.to_path_buf()),
                problems: vec!["the file is not valid UTF-8".into()],
            },
            _ => Error::io(path, e),
        })?;
        Self::parse(&text, &config_folder(path)).map_err(|e| match e {
            Error::Config { problems, .. } => Error::Config {
                file: Some(path.to_path_buf()),
                problems,
            },
            other => other,
        })
    }

    /// Parse TOML text. Collects every problem before failing.
    pub fn parse(text: &str, base: &Path) -> Result<Self> {
        let root: Table = text.parse::<Table>().map_err(|e| Error::Config {
            file: None,
            problems: vec![format!("TOML syntax: {e}")],
        })?;
        let mut problems = Vec::new();
        let known = [
            "run",
            "ingest",
            "graph",
            "negatives",
            "train",
            "evaluate",
            "gates",
            "export",
        ];
        for k in root.keys() {
            if !known.contains(&k.as_str()) {
                problems.push(format!(
                    "{k}: unknown section (expected one of {})",
                    known.join(", ")
                ));
            }
        }
        let run = read_run(&root, base, &mut problems);
        let ingest = read_ingest(&root, &mut problems);
        let graph = read_graph(&root, &mut problems);
        let negatives = read_negatives(&root, &mut problems);
        let train = read_train(&root, &mut problems);
        let evaluate = read_evaluate(&root, &mut problems);
        let gates = read_gates(&root, &evaluate.ks, &mut problems);
        let export = read_export(&root, base, &mut problems);
        let cfg = Self {
            run,
            ingest,
            graph,
            negatives,
            train,
            evaluate,
            gates,
            export,
            folder: base.to_path_buf(),
        };
        cfg.cross_checks(&mut problems);
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(Error::Config {
                file: None,
                problems,
            })
        }
    }

    fn cross_checks(&self, problems: &mut Vec<String>) {
        let i = &self.ingest;
        if i.inputs.is_empty() {
            problems.push("ingest.inputs: at least one file or glob is required".into());
        }
        if i.format == InputFormat::Delimited {
            if i.separator.is_empty() {
                problems.push("ingest.separator: must not be empty".into());
            }
            if !i.header && i.columns.is_empty() {
                problems.push("ingest.columns: required when ingest.header = false".into());
            }
        }
        if i.split == SplitMode::TimeCutoff {
            match (i.dev_from, i.test_from) {
                (Some(d), Some(t)) if d <= t => {}
                (Some(_), Some(_)) => problems.push("ingest.dev-from: must not be after ingest.test-from".into()),
                _ => problems.push("ingest.test-from: split = \"time-cutoff\" needs dev-from and test-from (unix seconds)".into()),
            }
        }
        if parse_metric(&self.train.early_stop_metric).is_none() {
            problems.push(format!(
                "train.early-stop-metric: expected HR@K or NDCG@K, found {:?}",
                self.train.early_stop_metric
            ));
        }
        if self.train.logq != LogQ::Off && self.train.loss != Loss::SampledSoftmax {
            problems.push(
                "train.logq: the logQ correction applies to loss = \"sampled-softmax\" only"
                    .to_owned(),
            );
        }
        if self.train.negative_weight != 1.0 && self.train.loss != Loss::SampledSoftmax {
            problems.push(
                "train.negative-weight: weighs the negatives of loss = \"sampled-softmax\" only"
                    .to_owned(),
            );
        }
        if self.train.history_negatives && self.train.loss != Loss::SampledSoftmax {
            problems.push(
                "train.history-negatives: adds exact negatives to loss = \"sampled-softmax\" only"
                    .to_owned(),
            );
        }
        if self.train.head_negatives > 0
            && (self.train.loss != Loss::SampledSoftmax
                || !matches!(self.train.logq, LogQ::Random | LogQ::Stratified))
        {
            problems.push(
                "train.head-negatives: an exact stratum of loss = \"sampled-softmax\" with logq = \"random\" or \"stratified\" (the random part, corrected, estimates the items outside it)"
                    .to_owned(),
            );
        }
        if self.train.history_negatives
            && self.train.logq == LogQ::Stratified
            && !self.negatives.exclude_history
        {
            problems.push(
                "train.logq = \"stratified\" with history-negatives needs negatives.exclude-history = true: a hard negative from the history would be counted twice, in the window and in the stratum"
                    .to_owned(),
            );
        }
        if self.negatives.distinct
            && self.negatives.n_hard > 0
            && self.train.loss == Loss::SampledSoftmax
            && self.train.logq == LogQ::All
        {
            problems.push(
                "negatives.distinct with train.logq = \"all\": a distinct row's stored ln q is conditional on its earlier draws, not the probability of drawing the item that logQ corrects by; use logq = \"stratified\" (or \"random\")"
                    .to_owned(),
            );
        }
        if self.train.history_negatives && self.train.backbone == Backbone::Encoder {
            problems.push(
                "train.history-negatives: needs a causal backbone (sasrec, gru4rec), whose rows are a user's sequence"
                    .to_owned(),
            );
        }
        if matches!(
            self.train.loss,
            Loss::Bpr | Loss::Bce | Loss::Gbce | Loss::SampledSoftmax
        ) && self.train.n_random == 0
            && self.negatives.n_hard == 0
        {
            problems.push(format!(
                "train.n-random: loss {:?} needs negatives, but n-random and negatives.n-hard are 0",
                self.train.loss
            ));
        }
        if self.train.random_groups > 1
            && !matches!(
                self.train.random_scope,
                RandomScope::Batch | RandomScope::Interleaved
            )
        {
            problems.push(format!(
                "train.random-groups: {} groups need random-scope = \"batch\" or \"interleaved\" (rows or positions draw their own negatives with \"row\" and \"position\")",
                self.train.random_groups
            ));
        }
        if self.train.bce_offset != BceOffset::None
            && !matches!(self.train.loss, Loss::Bce | Loss::Gbce)
        {
            problems.push(
                "train.bce-offset: applies to loss = \"bce\" or \"gbce\" only (the other objectives are unchanged by a shift of every logit)"
                    .to_string(),
            );
        }
        if self.train.backbone != Backbone::Sasrec {
            let t = &self.train;
            for (key, set) in [
                ("sasrec-residual", !is_default(&t.sasrec_residual)),
                ("sasrec-padding", !is_default(&t.sasrec_padding)),
                ("sasrec-init", !is_default(&t.sasrec_init)),
            ] {
                if set {
                    problems.push(format!(
                        "train.{key}: applies to backbone = \"sasrec\" only"
                    ));
                }
            }
        }
        if self.train.backbone != Backbone::Gru4rec
            && !self.train.dim.is_multiple_of(self.train.heads)
        {
            problems.push(format!(
                "train.heads: {} does not divide train.dim = {}",
                self.train.heads, self.train.dim
            ));
        }
        if self.train.warm_start_epochs > self.train.epochs {
            // The negatives stage draws `epochs` epochs; a warm-started run reads
            // them from epoch 0 on.
            problems.push(format!(
                "train.warm-start-epochs: {} is more than train.epochs = {}",
                self.train.warm_start_epochs, self.train.epochs
            ));
        }
        let d = self.run.device.as_str();
        let ok = matches!(d, "auto" | "cpu" | "cuda")
            || d.strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<u32>().is_ok());
        if !ok {
            problems.push(format!(
                "run.device: expected auto | cpu | cuda | cuda:N, found {d:?}"
            ));
        }
    }

    /// The default config with no inputs (tests, docs).
    pub fn defaults(base: &Path) -> Self {
        let mut c = Self::parse("[ingest]\ninputs = [\"x\"]\n", base)
            .expect("the defaults parse by construction");
        c.ingest.inputs.clear();
        c
    }

    /// Threads to use (resolves 0 to the number of cores).
    pub fn threads(&self) -> usize {
        if self.run.threads == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            self.run.threads
        }
    }
}

fn read_run(root: &Table, base: &Path, problems: &mut Vec<String>) -> RunSettings {
    let mut s = Section::new(root, "run", problems);
    let workdir = PathBuf::from(s.string("workdir", "work"));
    let seed = s.int("seed", 42, 0, i64::MAX);
    let threads = s.int("threads", 0, 0, 1024);
    let device = s.string("device", "auto");
    let keep_runs = s.uint("keep-runs", 2, 1, 10_000);
    s.finish();
    RunSettings {
        workdir: if workdir.is_absolute() {
            workdir
        } else {
            base.join(workdir)
        },
        seed: u64::try_from(seed).unwrap_or(42),
        threads: usize::try_from(threads).unwrap_or(0),
        device,
        keep_runs,
    }
}

fn read_ingest(root: &Table, problems: &mut Vec<String>) -> IngestSettings {
    let mut s = Section::new(root, "ingest", problems);
    let str_list = |v: &Value| v.as_str().map(str::to_owned);
    let inputs = s.list("inputs", vec![], str_list);
    let format = s.choice(
        "format",
        InputFormat::Delimited,
        &[
            ("delimited", InputFormat::Delimited),
            ("jsonl", InputFormat::Jsonl),
            ("sequences", InputFormat::Sequences),
        ],
    );
    let separator = s.string("separator", ",");
    let header = s.boolean("header", true);
    let columns = s.list("columns", vec![], str_list);
    let user_col = s.string("user-col", "user_id");
    let item_col = s.string("item-col", "item_id");
    let time_col = s.string("time-col", "timestamp");
    let rating_col = s.string("rating-col", "");
    let time_format = s.choice(
        "time-format",
        TimeFormat::Auto,
        &[
            ("auto", TimeFormat::Auto),
            ("unix", TimeFormat::Unix),
            ("iso", TimeFormat::Iso),
        ],
    );
    let on_bad_row = s.choice(
        "on-bad-row",
        BadRowPolicy::Error,
        &[("error", BadRowPolicy::Error), ("skip", BadRowPolicy::Skip)],
    );
    let dedup_pairs = s.boolean("dedup-pairs", false);
    let min_rating = s.opt_float("min-rating");
    let user_core = s.uint("user-core", 5, 0, 1_000_000);
    let item_core = s.uint("item-core", 5, 0, 1_000_000);
    let split = s.choice(
        "split",
        SplitMode::LeaveOneOut,
        &[
            ("leave-one-out", SplitMode::LeaveOneOut),
            ("time-cutoff", SplitMode::TimeCutoff),
        ],
    );
    let dev_from = s.opt_int("dev-from");
    let test_from = s.opt_int("test-from");
    let short_users = s.choice(
        "short-users",
        ShortUsers::Train,
        &[("train", ShortUsers::Train), ("drop", ShortUsers::Drop)],
    );
    s.finish();
    IngestSettings {
        inputs,
        format,
        separator: unescape(&separator),
        header,
        columns,
        user_col,
        item_col,
        time_col,
        rating_col,
        time_format,
        on_bad_row,
        dedup_pairs,
        min_rating,
        user_core,
        item_core,
        split,
        dev_from,
        test_from,
        short_users,
    }
}

/// `\t` in a TOML literal string means a tab.
fn unescape(s: &str) -> String {
    s.replace("\\t", "\t")
}

fn read_graph(root: &Table, problems: &mut Vec<String>) -> GraphSettings {
    let mut s = Section::new(root, "graph", problems);
    let hops = s.uint("hops", 3, 1, 16);
    let overlap = s.choice(
        "overlap",
        OverlapKind::Jaccard,
        &[
            ("jaccard", OverlapKind::Jaccard),
            ("weighted", OverlapKind::Weighted),
        ],
    );
    let min_overlap = s.float("min-overlap", 0.0, 0.0, 1.0);
    let max_neighbors = s.uint("max-neighbors", 0, 0, u32::MAX);
    s.finish();
    GraphSettings {
        hops,
        overlap,
        min_overlap,
        max_neighbors,
    }
}

fn read_negatives(root: &Table, problems: &mut Vec<String>) -> NegativesSettings {
    let mut s = Section::new(root, "negatives", problems);
    let sampler = s.choice(
        "sampler",
        SamplerKind::Gnno,
        &[
            ("gnno", SamplerKind::Gnno),
            ("uniform", SamplerKind::Uniform),
            ("popularity", SamplerKind::Popularity),
        ],
    );
    let n_hard = s.uint("n-hard", 9, 0, 10_000);
    let temperature = s.float("temperature", 1.0, 1e-6, 1e6);
    let warmup = s.uint("warmup", 19, 0, 1_000_000);
    let pace = s.float("pace", 0.04, 0.0, 1.0);
    let max_hardness = s.float("max-hardness", 0.5, 0.0, 1.0);
    let exclude_history = s.boolean("exclude-history", true);
    let distinct = s.boolean("distinct", false);
    let popularity_alpha = s.float("popularity-alpha", 0.75, 0.0, 10.0);
    let shard_rows = s.uint("shard-rows", 65_536, 1, u32::MAX);
    let row_group_rows = s.uint("row-group-rows", 16_384, 1, u32::MAX);
    s.finish();
    NegativesSettings {
        sampler,
        n_hard,
        temperature,
        warmup,
        pace,
        max_hardness,
        exclude_history,
        distinct,
        popularity_alpha,
        shard_rows,
        row_group_rows,
    }
}

fn read_train(root: &Table, problems: &mut Vec<String>) -> TrainSettings {
    let mut s = Section::new(root, "train", problems);
    let backbone = s.choice(
        "backbone",
        Backbone::Encoder,
        &[
            ("encoder", Backbone::Encoder),
            ("sasrec", Backbone::Sasrec),
            ("gru4rec", Backbone::Gru4rec),
        ],
    );
    let loss = s.choice(
        "loss",
        Loss::Bpr,
        &[
            ("bpr", Loss::Bpr),
            ("bce", Loss::Bce),
            ("gbce", Loss::Gbce),
            ("sampled-softmax", Loss::SampledSoftmax),
            ("full-softmax", Loss::FullSoftmax),
        ],
    );
    let random_negatives = s.choice(
        "random-negatives",
        RandomNegatives::Uniform,
        &[
            ("uniform", RandomNegatives::Uniform),
            ("popularity", RandomNegatives::Popularity),
        ],
    );
    let random_scope = s.choice(
        "random-scope",
        RandomScope::Row,
        &[
            ("row", RandomScope::Row),
            ("batch", RandomScope::Batch),
            ("position", RandomScope::Position),
            ("interleaved", RandomScope::Interleaved),
        ],
    );
    let logq = s.choice(
        "logq",
        LogQ::Off,
        &[
            ("off", LogQ::Off),
            ("random", LogQ::Random),
            ("all", LogQ::All),
            ("stratified", LogQ::Stratified),
        ],
    );
    let early_stop_metric = s.string("early-stop-metric", "NDCG@10");
    let batching = s.choice(
        "batching",
        Batching::Random,
        &[("random", Batching::Random), ("length", Batching::Length)],
    );
    let t = TrainSettings {
        backbone,
        loss,
        random_negatives,
        random_scope,
        random_groups: s.uint("random-groups", 1, 1, 1_000_000),
        random_alpha: s.float("random-alpha", 1.0, 0.0, 10.0),
        logq,
        negative_weight: s.float("negative-weight", 1.0, 1e-6, 1e6),
        history_negatives: s.boolean("history-negatives", false),
        head_negatives: s.uint("head-negatives", 0, 0, 1_000_000),
        gbce_t: s.float("gbce-t", 0.75, 0.0, 1.0),
        bce_offset: s.choice(
            "bce-offset",
            BceOffset::None,
            &[("none", BceOffset::None), ("prior", BceOffset::Prior)],
        ),
        early_stop_metric,
        batching,
        epochs: s.uint("epochs", 200, 1, 100_000),
        history_len: s.uint("history-len", 20, 1, 10_000),
        dim: s.uint("dim", 64, 1, 65_536),
        layers: s.uint("layers", 2, 1, 64),
        heads: s.uint("heads", 2, 1, 64),
        dropout: s.float("dropout", 0.0, 0.0, 0.99),
        sasrec_residual: s.choice(
            "sasrec-residual",
            SasrecResidual::Query,
            &[
                ("query", SasrecResidual::Query),
                ("input", SasrecResidual::Input),
            ],
        ),
        sasrec_padding: s.choice(
            "sasrec-padding",
            SasrecPadding::Masked,
            &[
                ("masked", SasrecPadding::Masked),
                ("attended", SasrecPadding::Attended),
            ],
        ),
        sasrec_init: s.choice(
            "sasrec-init",
            SasrecInit::Normal,
            &[
                ("normal", SasrecInit::Normal),
                ("xavier", SasrecInit::Xavier),
            ],
        ),
        output_embedding: s.choice(
            "output-embedding",
            OutputEmbedding::Tied,
            &[
                ("tied", OutputEmbedding::Tied),
                ("separate", OutputEmbedding::Separate),
            ],
        ),
        gamma: s.float("gamma", 1.0, 0.0, 1e6),
        cl_temperature: s.float("cl-temperature", 0.2, 1e-6, 1e6),
        n_random: s.uint("n-random", 16, 0, 100_000),
        batch_size: s.uint("batch-size", 4096, 1, 10_000_000),
        lr: s.float("lr", 1e-4, 0.0, 10.0),
        weight_decay: s.float("weight-decay", 1e-6, 0.0, 10.0),
        patience: s.uint("patience", 10, 1, 100_000),
        warm_start: s.choice(
            "warm-start",
            WarmStart::Off,
            &[
                ("off", WarmStart::Off),
                ("last-accepted", WarmStart::LastAccepted),
            ],
        ),
        warm_start_epochs: s.uint("warm-start-epochs", 0, 0, 100_000),
    };
    s.finish();
    t
}

fn read_evaluate(root: &Table, problems: &mut Vec<String>) -> EvaluateSettings {
    let mut s = Section::new(root, "evaluate", problems);
    let ks = s.list("ks", vec![5, 10, 20, 50], |v| {
        v.as_integer()
            .and_then(|i| u32::try_from(i).ok())
            .filter(|&i| i > 0)
    });
    let e = EvaluateSettings {
        ks,
        exclude_history: s.boolean("exclude-history", true),
        sampled_negatives: s.uint("sampled-negatives", 1000, 0, 1_000_000),
        batch_size: s.uint("batch-size", 1024, 1, 1_000_000),
    };
    s.finish();
    e
}

/// `[gates.<stage>]` tables of `figure = { min, max, max-drop, max-rise }`.
fn read_gates(root: &Table, ks: &[u32], problems: &mut Vec<String>) -> Vec<Gate> {
    let mut gates = Vec::new();
    let Some(v) = root.get("gates") else {
        return gates;
    };
    let Value::Table(stages) = v else {
        problems.push("gates: expected a table ([gates.<stage>])".into());
        return gates;
    };
    for (stage, figs) in stages {
        if !STAGE_FIGURES.iter().any(|(s, _)| s == stage) {
            let names: Vec<&str> = STAGE_FIGURES.iter().map(|(s, _)| *s).collect();
            problems.push(format!(
                "gates.{stage}: unknown stage (expected one of {})",
                names.join(", ")
            ));
            continue;
        }
        let Value::Table(figs) = figs else {
            problems.push(format!("gates.{stage}: expected a table ([gates.{stage}])"));
            continue;
        };
        for (figure, bounds) in figs {
            let path = format!("gates.{stage}.\"{figure}\"");
            if !is_stage_figure(stage, figure, ks) {
                problems.push(format!(
                    "{path}: {stage} has no figure {figure:?} (see docs/CONFIG.md, [gates])"
                ));
                continue;
            }
            let Value::Table(b) = bounds else {
                problems.push(format!(
                    "{path}: expected a table such as {{ min = 1, max-drop = 0.2 }}"
                ));
                continue;
            };
            let mut s = Section {
                path: path.clone(),
                table: Some(b),
                used: BTreeSet::new(),
                problems,
            };
            let gate = Gate {
                stage: stage.clone(),
                figure: figure.clone(),
                min: s.opt_float("min"),
                max: s.opt_float("max"),
                max_drop: s.opt_float("max-drop"),
                max_rise: s.opt_float("max-rise"),
            };
            s.finish();
            for (k, v) in [("max-drop", gate.max_drop), ("max-rise", gate.max_rise)] {
                if v.is_some_and(|x| !(0.0..=1e6).contains(&x)) {
                    problems.push(format!("{path}.{k}: must be a fraction >= 0"));
                }
            }
            if gate.min.is_none()
                && gate.max.is_none()
                && gate.max_drop.is_none()
                && gate.max_rise.is_none()
            {
                problems.push(format!(
                    "{path}: no bound (min, max, max-drop or max-rise) is set"
                ));
            }
            gates.push(gate);
        }
    }
    gates
}

fn read_export(root: &Table, base: &Path, problems: &mut Vec<String>) -> ExportSettings {
    let mut s = Section::new(root, "export", problems);
    let top_k = s.uint("top-k", 100, 1, 100_000);
    let exclude_history = s.boolean("exclude-history", true);
    let users = match s.raw("users") {
        None => None,
        Some(Value::String(u)) if !u.is_empty() => Some(u.clone()),
        Some(Value::String(_)) => {
            s.bad(
                "users",
                "must not be empty (leave the key out for every user)",
            );
            None
        }
        Some(v) => {
            s.bad("users", format!("expected a path, found {}", v.type_str()));
            None
        }
    };
    let batch_size = s.uint("batch-size", 1024, 1, 1_000_000);
    s.finish();
    let users_path = users.as_ref().map(|u| {
        let p = PathBuf::from(u);
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    });
    ExportSettings {
        top_k,
        exclude_history,
        users,
        batch_size,
        users_path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems a config text is refused with.
    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new(".")) {
            Err(Error::Config { problems, .. }) => problems,
            other => panic!("expected config error, got {other:?}"),
        }
    }

    /// The `[train]` settings of a config with these `[train]` lines, and their
    /// serialised form (what enters the train stage's key).
    fn train_of(lines: &str) -> (TrainSettings, serde_json::Value) {
        let c = Config::parse(
            &format!("[ingest]\ninputs=[\"a\"]\n[train]\n{lines}"),
            Path::new("."),
        )
        .expect("parses");
        let key = serde_json::to_value(&c.train).expect("serialises");
        (c.train, key)
    }

    #[test]
    fn gates_are_read_per_stage_and_figure_and_typos_are_errors() {
        let text = "[ingest]\ninputs=[\"a\"]\n[gates.ingest]\nrows = { min = 10, max-drop = 0.2 }\n[gates.evaluate]\n\"test.NDCG@10\" = { max-drop = 0.05 }\n";
        let c = Config::parse(text, Path::new(".")).expect("parses");
        assert_eq!(c.gates.len(), 2);
        assert_eq!(c.gates[0].stage, "evaluate");
        assert_eq!(c.gates[0].figure, "test.NDCG@10");
        assert_eq!(c.gates[0].max_drop, Some(0.05));
        assert_eq!(c.gates[1].min, Some(10.0));
        assert_eq!(c.gates[1].max_drop, Some(0.2));
        let bad = "[ingest]\ninputs=[\"a\"]\n[gates.ingest]\nrow = { min = 1 }\nusers = { minimum = 1 }\nitems = {}\n[gates.evaluate]\n\"test.NDCG@7\" = { min = 0.1 }\n[gates.nightly]\nx = { min = 1 }\n";
        let problems = problems(bad);
        let joined = problems.join("\n");
        for needle in [
            "gates.ingest.\"row\": ingest has no figure",
            "gates.ingest.\"users\".minimum: unknown key",
            "gates.ingest.\"items\": no bound",
            "gates.evaluate.\"test.NDCG@7\": evaluate has no figure",
            "gates.nightly: unknown stage",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn defaults_are_the_authors_beauty_settings() {
        let c = Config::defaults(Path::new("/x"));
        assert_eq!(c.negatives.n_hard, 9);
        assert_eq!(c.negatives.warmup, 19);
        assert!((c.negatives.pace - 0.04).abs() < 1e-12);
        assert_eq!(c.train.n_random, 16);
        assert_eq!(c.run.workdir, PathBuf::from("/x/work"));
        assert_eq!(c.ingest.user_core, 5);
    }

    #[test]
    fn every_problem_is_listed_with_its_key_path() {
        let text = "[run]\nseed = \"x\"\nbogus = 1\n[graph]\nhops = 0\noverlap = \"cosine\"\n[negatives]\npace = 2.0\n[ingest]\ninputs = [1]\n[extra]\n";
        let problems = problems(text);
        let joined = problems.join("\n");
        for needle in [
            "run.seed: expected an integer",
            "run.bogus: unknown key",
            "graph.hops: 0 is out of range",
            "graph.overlap: expected one of jaccard | weighted",
            "negatives.pace: 2 is out of range",
            "ingest.inputs[0]: unexpected value 1",
            "extra: unknown section",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        assert_eq!(problems.len(), 8, "{joined}");
    }

    #[test]
    fn export_and_warm_start_keys_have_defaults_and_are_checked() {
        let c = Config::defaults(Path::new("/x"));
        assert_eq!(
            (
                c.export.top_k,
                c.export.exclude_history,
                c.export.users_path
            ),
            (100, true, None)
        );
        assert_eq!(
            (c.train.warm_start, c.train.warm_start_epochs),
            (WarmStart::Off, 0)
        );
        let c = Config::parse(
            "[ingest]\ninputs=[\"a\"]\n[export]\nusers = \"lists/u.txt\"\n[train]\nwarm-start = \"last-accepted\"\n",
            Path::new("/cfg"),
        )
        .expect("parses");
        assert_eq!(
            c.export.users_path,
            Some(PathBuf::from("/cfg/lists/u.txt")),
            "relative to the config file"
        );
        assert_eq!(c.export.users.as_deref(), Some("lists/u.txt"));
        assert_eq!(c.train.warm_start, WarmStart::LastAccepted);
        let text = "[ingest]\ninputs=[\"a\"]\n[export]\ntop-k = 0\nusers = 3\n[train]\nepochs = 5\nwarm-start = \"on\"\nwarm-start-epochs = 6\n";
        let problems = problems(text);
        let joined = problems.join("\n");
        for needle in [
            "export.top-k: 0 is out of range",
            "export.users: expected a path, found integer",
            "train.warm-start: expected one of off | last-accepted",
            "train.warm-start-epochs: 6 is more than train.epochs = 5",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn negative_weight_is_for_sampled_softmax_and_stays_out_of_the_key_at_one() {
        let c = Config::defaults(Path::new("/x"));
        assert!((c.train.negative_weight - 1.0).abs() < f64::EPSILON);
        let key = serde_json::to_value(&c.train).expect("serialises");
        assert!(
            key.get("negative_weight").is_none(),
            "older configs keep their train key"
        );
        let (_, key) = train_of("loss = \"sampled-softmax\"\nnegative-weight = 4\n");
        assert!((key["negative_weight"].as_f64().expect("a number") - 4.0).abs() < f64::EPSILON);
        let found =
            problems("[ingest]\ninputs=[\"a\"]\n[train]\nloss = \"bpr\"\nnegative-weight = 2\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with(
            "train.negative-weight: weighs the negatives of loss = \"sampled-softmax\" only"
        ));
        let found = problems(
            "[ingest]\ninputs=[\"a\"]\n[train]\nloss = \"sampled-softmax\"\nnegative-weight = 0\n",
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("train.negative-weight: 0 is out of range")),
            "{found:?}"
        );
    }

    #[test]
    fn head_negatives_are_a_stratum_of_sampled_softmax_and_stay_out_of_the_key_at_zero() {
        let c = Config::defaults(Path::new("/x"));
        assert_eq!(c.train.head_negatives, 0);
        let key = serde_json::to_value(&c.train).expect("serialises");
        assert!(
            key.get("head_negatives").is_none(),
            "older configs keep their train key"
        );
        let (t, key) = train_of(
            "backbone = \"sasrec\"\nloss = \"sampled-softmax\"\nlogq = \"stratified\"\nhead-negatives = 128\n",
        );
        assert_eq!(t.head_negatives, 128);
        assert_eq!(key["head_negatives"], serde_json::json!(128));
        for (loss, logq) in [
            ("gbce", "off"),
            ("sampled-softmax", "all"),
            ("sampled-softmax", "off"),
        ] {
            let found = problems(&format!(
                "[ingest]\ninputs=[\"a\"]\n[train]\nbackbone = \"sasrec\"\nloss = \"{loss}\"\nlogq = \"{logq}\"\nhead-negatives = 64\n"
            ));
            assert!(
                found.iter().any(|p| p.starts_with(
                    "train.head-negatives: an exact stratum of loss = \"sampled-softmax\""
                )),
                "{loss} / {logq}: {found:?}"
            );
        }
    }

    #[test]
    fn history_negatives_are_for_sampled_softmax_and_stay_out_of_the_key_when_off() {
        let c = Config::defaults(Path::new("/x"));
        assert!(!c.train.history_negatives);
        let key = serde_json::to_value(&c.train).expect("serialises");
        assert!(
            key.get("history_negatives").is_none(),
            "older configs keep their train key"
        );
        let (_, key) = train_of(
            "backbone = \"sasrec\"\nloss = \"sampled-softmax\"\nhistory-negatives = true\n",
        );
        assert_eq!(key["history_negatives"], serde_json::Value::Bool(true));
        let found = problems(
            "[ingest]\ninputs=[\"a\"]\n[train]\nbackbone = \"sasrec\"\nloss = \"gbce\"\nhistory-negatives = true\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with(
            "train.history-negatives: adds exact negatives to loss = \"sampled-softmax\" only"
        ));
        let found = problems(
            "[ingest]\ninputs=[\"a\"]\n[train]\nbackbone = \"encoder\"\nloss = \"sampled-softmax\"\nhistory-negatives = true\n",
        );
        assert!(
            found.iter().any(|p| p
                .starts_with("train.history-negatives: needs a causal backbone (sasrec, gru4rec)")),
            "{found:?}"
        );
        let stratified = "[ingest]\ninputs=[\"a\"]\n[train]\nbackbone = \"sasrec\"\nloss = \"sampled-softmax\"\nhistory-negatives = true\nlogq = \"stratified\"\n";
        assert!(Config::parse(stratified, Path::new(".")).is_ok());
        let found = problems(&format!(
            "{stratified}[negatives]\nexclude-history = false\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with(
            "train.logq = \"stratified\" with history-negatives needs negatives.exclude-history = true"
        ));
        // Distinct hard negatives: fine stratified, refused where logQ reads their q.
        let distinct = Config::parse(
            &format!("{stratified}[negatives]\ndistinct = true\n"),
            Path::new("."),
        )
        .expect("distinct and stratified");
        assert!(distinct.negatives.distinct);
        let key = |c: &Config| serde_json::to_value(&c.negatives).expect("serialises");
        assert_eq!(key(&distinct)["distinct"], serde_json::json!(true));
        let plain = Config::parse(stratified, Path::new(".")).expect("parses");
        assert!(
            key(&plain).get("distinct").is_none(),
            "left out at its default"
        );
        let found = problems(
            "[ingest]\ninputs=[\"a\"]\n[train]\nbackbone = \"sasrec\"\nloss = \"sampled-softmax\"\nlogq = \"all\"\n[negatives]\ndistinct = true\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("negatives.distinct with train.logq = \"all\""));
        let found = problems(
            "[ingest]\ninputs=[\"a\"]\n[train]\nloss = \"sampled-softmax\"\nhistory-negatives = 1\n",
        );
        assert!(
            found
                .iter()
                .any(|p| p.contains("train.history-negatives: expected true or false")),
            "{found:?}"
        );
    }

    #[test]
    fn random_groups_need_batch_scope_and_stay_out_of_the_key_at_one() {
        let c = Config::defaults(Path::new("/x"));
        assert_eq!(c.train.random_groups, 1);
        let key = serde_json::to_value(&c.train).expect("serialises");
        assert!(
            key.get("random_groups").is_none(),
            "the default must not change the train stage's key of older configs"
        );
        let c = Config::parse(
            "[ingest]\ninputs=[\"a\"]\n[train]\nrandom-scope = \"batch\"\nrandom-groups = 8\n",
            Path::new("."),
        )
        .expect("parses");
        assert_eq!(
            (c.train.random_scope, c.train.random_groups),
            (RandomScope::Batch, 8)
        );
        let key = serde_json::to_value(&c.train).expect("serialises");
        assert_eq!(key["random_groups"], 8);
        let found = problems("[ingest]\ninputs=[\"a\"]\n[train]\nrandom-groups = 4\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("train.random-groups: 4 groups need random-scope = \"batch\""));
        let (t, key) = train_of("random-scope = \"position\"\n");
        assert_eq!(t.random_scope, RandomScope::Position);
        assert_eq!(key["random_scope"], "position");
        let (t, _) = train_of("random-scope = \"interleaved\"\nrandom-groups = 32\n");
        assert_eq!(
            (t.random_scope, t.random_groups),
            (RandomScope::Interleaved, 32)
        );
        let found = problems(
            "[ingest]\ninputs=[\"a\"]\n[train]\nrandom-scope = \"position\"\nrandom-groups = 4\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("train.random-groups: 4 groups need random-scope"));
    }

    #[test]
    fn bce_offset_is_bce_only_and_stays_out_of_the_key_at_its_default() {
        let (t, key) = train_of("");
        assert_eq!(t.bce_offset, BceOffset::None);
        assert!(key.get("bce_offset").is_none());
        let (t, key) = train_of("loss = \"gbce\"\nbce-offset = \"prior\"\n");
        assert_eq!(t.bce_offset, BceOffset::Prior);
        assert_eq!(key["bce_offset"], "prior");
        let problems = problems(
            "[ingest]\ninputs=[\"a\"]\n[train]\nloss = \"sampled-softmax\"\nbce-offset = \"prior\"\n",
        );
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("train.bce-offset: applies to loss = \"bce\" or \"gbce\" only")
        );
    }

    #[test]
    fn output_embedding_stays_out_of_the_key_at_its_default() {
        let (t, key) = train_of("");
        assert_eq!(t.output_embedding, OutputEmbedding::Tied);
        assert!(key.get("output_embedding").is_none());
        let (t, key) = train_of("output-embedding = \"separate\"\n");
        assert_eq!(t.output_embedding, OutputEmbedding::Separate);
        assert_eq!(key["output_embedding"], "separate");
        let problems = problems("[ingest]\ninputs=[\"a\"]\n[train]\noutput-embedding = \"own\"\n");
        assert_eq!(
            problems,
            ["train.output-embedding: expected one of tied | separate, found \"own\""]
        );
    }

    #[test]
    fn sasrec_forms_are_sasrec_only_and_stay_out_of_the_key_at_default() {
        let c = Config::defaults(Path::new("/x"));
        let key = serde_json::to_value(&c.train).expect("serialises");
        for k in ["sasrec_residual", "sasrec_padding", "sasrec_init"] {
            assert!(key.get(k).is_none(), "{k} at its default changed the key");
        }
        let c = Config::parse(
            "[ingest]\ninputs=[\"a\"]\n[train]\nbackbone = \"sasrec\"\nsasrec-residual = \"input\"\nsasrec-padding = \"attended\"\nsasrec-init = \"xavier\"\n",
            Path::new("."),
        )
        .expect("parses");
        let t = &c.train;
        assert_eq!(
            (t.sasrec_residual, t.sasrec_padding, t.sasrec_init),
            (
                SasrecResidual::Input,
                SasrecPadding::Attended,
                SasrecInit::Xavier
            )
        );
        let key = serde_json::to_value(t).expect("serialises");
        assert_eq!(key["sasrec_padding"], "attended");
        let problems = problems("[ingest]\ninputs=[\"a\"]\n[train]\nbackbone = \"gru4rec\"\nsasrec-init = \"xavier\"\nsasrec-padding = \"open\"\n");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems.iter().any(
            |p| p == "train.sasrec-padding: expected one of masked | attended, found \"open\""
        ));
        assert!(problems
            .iter()
            .any(|p| p == "train.sasrec-init: applies to backbone = \"sasrec\" only"));
    }

    #[test]
    fn tab_separator_is_unescaped() {
        let c = Config::parse(
            "[ingest]\ninputs=[\"a\"]\nseparator='\\t'\n",
            Path::new("."),
        )
        .expect("parses");
        assert_eq!(c.ingest.separator, "\t");
    }
}

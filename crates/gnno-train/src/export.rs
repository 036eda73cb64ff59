//! The export stage: what serving needs from the best model, with raw ids
//! throughout (docs/FORMATS.md, "export").
//!
//! - `item_embeddings.parquet`: every item's embedding row, in index order;
//! - `model.safetensors`: every model tensor plus the metadata a loader needs to
//!   rebuild the forward pass and map raw ids (docs/load_model.py reads it);
//! - `recommendations.parquet`: the top K items per user, scored from the user's
//!   whole sequence (train, dev and test items: "what comes next" for serving).
//!
//! Users are scored in batches of equal history width, so every user's scores are
//! computed at the same width whatever the batch size and thread count (a padded
//! row would reduce its softmax sums in another order); the top K comes from
//! libtorch's topk, and ties at the cut are resolved exactly on the CPU (lower
//! item index first), so the files are byte-identical across runs.

use crate::checkpoint;
use crate::model::Model;
use crate::safetensors::{F32Tensor, SafeTensors};
use crate::{history_tensor, pad_histories, torch, Job};
use gnno_core::config::{ExportSettings, TrainSettings};
use gnno_core::dataset::Dataset;
use gnno_core::error::{parquet_write, Error, IoContext, Result};
use gnno_core::progress::Progress;
use gnno_core::{fsutil, ItemIdx, UserIdx};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

pub const EMBEDDINGS_FILE: &str = "item_embeddings.parquet";
pub const MODEL_FILE: &str = "model.safetensors";
pub const RECOMMENDATIONS_FILE: &str = "recommendations.parquet";
/// Version of the exported model's layout (`format_version` in its metadata).
pub const MODEL_FORMAT_VERSION: u32 = 1;
/// The tensor holding one row per item (0 padding, 1..=N items, N + 1 the mask
/// token): carried over by raw id when a model is warm-started, as the separate
/// output table is.
pub const ITEMS_TENSOR: &str = "items.weight";
/// The separate output table's tensor (`train.output-embedding = "separate"`).
pub const OUT_ITEMS_TENSOR: &str = "out_items.weight";
/// LayerNorm epsilon of every block (tch's default), recorded for loaders.
const LAYER_NORM_EPS: &str = "1e-05";
/// Users per record batch of the recommendations file: fixed, so the file's
/// layout does not depend on `export.batch-size`.
const USERS_PER_RECORD_BATCH: usize = 4096;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExportReport {
    /// Users with recommendations.
    pub users: u64,
    /// Selected users with no interaction to score from (none after ingest).
    pub users_without_history: u64,
    pub items: u64,
    pub k: u32,
    pub exclude_history: bool,
    /// Rows of the recommendations file (K per user, fewer only when a user's
    /// history leaves fewer than K items).
    pub recommendations: u64,
    pub dim: u32,
    pub device: String,
    pub seconds: f64,
    pub users_per_second: f64,
}

/// A tensor as F32 values on the CPU.
pub fn to_f32(t: &Tensor, name: &str) -> Result<F32Tensor> {
    let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let data = Vec::<f32>::try_from(t.view([-1])).map_err(|e| torch(&e, name))?;
    Ok(F32Tensor {
        shape: t.size(),
        data,
    })
}

/// The model file: every variable of `vs` under its VarStore name, and the
/// metadata a loader needs (architecture, and the raw id of each item row).
pub fn model_file(
    vs: &nn::VarStore,
    cfg: &TrainSettings,
    item_raw: &[String],
) -> Result<SafeTensors> {
    let mut st = SafeTensors::default();
    for (name, t) in vs.variables() {
        let f = to_f32(&t, &name)?;
        st.tensors.insert(name, f);
    }
    let items = item_raw.get(1..).unwrap_or_default();
    let meta = [
        ("format", "gnno-model".to_owned()),
        ("format_version", MODEL_FORMAT_VERSION.to_string()),
        ("backbone", kebab(&cfg.backbone)),
        ("dim", cfg.dim.to_string()),
        ("layers", cfg.layers.to_string()),
        ("heads", cfg.heads.to_string()),
        ("history_len", cfg.history_len.to_string()),
        ("n_items", items.len().to_string()),
        ("layer_norm_eps", LAYER_NORM_EPS.to_owned()),
        ("sasrec_residual", kebab(&cfg.sasrec_residual)),
        ("sasrec_padding", kebab(&cfg.sasrec_padding)),
        (
            "items",
            serde_json::to_string(items).map_err(|e| Error::internal(e.to_string()))?,
        ),
    ];
    st.metadata = meta.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    Ok(st)
}

/// A unit enum's config spelling (`"sasrec"`, `"attended"`).
pub(crate) fn kebab(v: &impl serde::Serialize) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The users to export, in output order: the lines of `file` (raw user ids; blank
/// lines skipped) or every user in index order. An unknown or repeated id is an
/// input error naming the file and line.
pub fn select_users(ds: &Dataset, file: Option<&Path>) -> Result<Vec<UserIdx>> {
    let Some(path) = file else {
        return Ok((0..ds.n_users())
            .filter_map(|u| UserIdx::try_from(u).ok())
            .collect());
    };
    let text = std::fs::read_to_string(path).at(path)?;
    let index: HashMap<&str, UserIdx> = ds
        .user_raw
        .iter()
        .enumerate()
        .filter_map(|(u, r)| Some((r.as_str(), UserIdx::try_from(u).ok()?)))
        .collect();
    let mut first_line: HashMap<UserIdx, usize> = HashMap::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() {
            continue;
        }
        let loc = || format!("{}:{}", path.display(), n + 1);
        let u = *index.get(id).ok_or_else(|| {
            Error::input(loc(), format!("unknown user id {id:?}")).with_hint(
                "list raw user ids of the ingest output (users.parquet); \
                 k-core filtering may have dropped this user",
            )
        })?;
        if let Some(first) = first_line.insert(u, n + 1) {
            return Err(Error::input(
                loc(),
                format!("user id {id:?} is listed twice (first on line {first})"),
            ));
        }
        out.push(u);
    }
    if out.is_empty() {
        return Err(Error::input(
            path.display().to_string(),
            "lists no user id (export.users)",
        ));
    }
    Ok(out)
}

/// Top-K recommendations of each user in `users` (same order): (item, score) by
/// score descending, ties by lower item index. Each user is scored from the last
/// `history-len` items of their whole sequence; `exclude_history` removes every
/// item of that sequence from the candidates. Users without any item get none.
#[expect(clippy::too_many_arguments, reason = "plain values, two call sites")]
pub fn recommend(
    model: &Model,
    ds: &Dataset,
    users: &[UserIdx],
    k: usize,
    exclude_history: bool,
    batch: usize,
    l: usize,
    device: Device,
    progress: &dyn Progress,
) -> Result<Vec<Vec<(ItemIdx, f32)>>> {
    let seqs: Vec<Vec<ItemIdx>> = users.iter().map(|&u| ds.full_seq(u)).collect();
    let trim = model.trims_padding();
    let width = |i: usize| if trim { seqs[i].len().min(l) } else { l };
    // Equal widths together (stable: user order within a width).
    let mut order: Vec<usize> = (0..users.len()).filter(|&i| !seqs[i].is_empty()).collect();
    order.sort_by_key(|&i| width(i));
    let n_all = i64::from(ds.n_items) + 2;
    let k = k.min(ds.n_items as usize);
    let k64 = i64::try_from(k).unwrap_or(1);
    let mut out = vec![Vec::new(); users.len()];
    if k == 0 {
        return Ok(out);
    }
    tch::no_grad(|| -> Result<()> {
        let mut start = 0;
        while start < order.len() {
            let w = width(order[start]);
            let mut end = start;
            while end < order.len() && end - start < batch.max(1) && width(order[end]) == w {
                end += 1;
            }
            let chunk = &order[start..end];
            let hist = pad_histories(chunk.iter().map(|&i| seqs[i].as_slice()), w);
            let rep = model.encode(&history_tensor(&hist, w, device), false);
            let mut scores = model.score_all(&rep);
            if !crate::evaluate::all_finite(&scores) {
                return Err(Error::usage(
                    "export: the best model gives non-finite scores (NaN or infinity)",
                )
                .with_hint("training diverged: lower train.lr or check the data"));
            }
            // Padding and the mask token are never candidates.
            let special = Tensor::from_slice(&[0i64, n_all - 1]).to_device(device);
            let _ = scores.index_fill_(1, &special, f64::NEG_INFINITY);
            if exclude_history {
                let hw = chunk.iter().map(|&i| seqs[i].len()).max().unwrap_or(1);
                let mut cols = Vec::with_capacity(chunk.len() * hw);
                for &i in chunk {
                    cols.extend(seqs[i].iter().map(|&j| i64::from(j)));
                    // Column 0 is -inf already.
                    cols.extend(std::iter::repeat_n(0, hw - seqs[i].len()));
                }
                let _ =
                    scores.scatter_value_(1, &history_tensor(&cols, hw, device), f64::NEG_INFINITY);
            }
            let (vals, idx) = scores.topk(k64, 1, true, true);
            let kth = vals.narrow(1, k64 - 1, 1);
            // Items scoring at least the K-th score: exactly K unless there are
            // ties at the cut (or fewer than K candidates, the K-th being -inf).
            let at_least = scores
                .ge_tensor(&kth)
                .sum_dim_intlist(1i64, false, Kind::Int64);
            let cpu = |t: &Tensor| t.to_device(Device::Cpu);
            let vals =
                Vec::<f32>::try_from(cpu(&vals).view([-1])).map_err(|e| torch(&e, "topk"))?;
            let idx = Vec::<i64>::try_from(cpu(&idx).view([-1])).map_err(|e| torch(&e, "topk"))?;
            let at_least = Vec::<i64>::try_from(cpu(&at_least)).map_err(|e| torch(&e, "topk"))?;
            for (r, &i) in chunk.iter().enumerate() {
                let cut = vals[r * k + k - 1];
                let mut top: Vec<(ItemIdx, f32)> = if at_least[r] == k64 && cut.is_finite() {
                    (r * k..(r + 1) * k)
                        .map(|j| (ItemIdx::try_from(idx[j]).unwrap_or(0), vals[j]))
                        .collect()
                } else {
                    // Decide the cut exactly from the whole row.
                    let row = Vec::<f32>::try_from(cpu(&scores.get(i64::try_from(r).unwrap_or(0))))
                        .map_err(|e| torch(&e, "scores"))?;
                    row.iter()
                        .enumerate()
                        .filter(|&(_, &s)| s.is_finite() && s >= cut)
                        .map(|(j, &s)| (ItemIdx::try_from(j).unwrap_or(0), s))
                        .collect()
                };
                top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                top.truncate(k);
                out[i] = top;
            }
            progress.advance(chunk.len() as u64);
            start = end;
        }
        Ok(())
    })?;
    Ok(out)
}

fn arrow_err(path: &Path, e: &arrow::error::ArrowError) -> Error {
    Error::internal(format!("writing {}: {e}", path.display()))
}

/// Write record batches to a Snappy-compressed Parquet file, atomically.
fn write_parquet(
    path: &Path,
    schema: Arc<arrow::datatypes::Schema>,
    batches: impl Iterator<Item = Result<arrow::array::RecordBatch>>,
) -> Result<()> {
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;
    fsutil::write_with(path, |f, tmp| {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, schema, Some(props))
            .map_err(|e| parquet_write(tmp, e))?;
        for b in batches {
            w.write(&b?).map_err(|e| parquet_write(tmp, e))?;
        }
        w.close().map_err(|e| parquet_write(tmp, e))?;
        Ok(())
    })
}

/// `item` (raw id) and `vector` (FixedSizeList<Float32, d>) for items 1..=N.
fn write_embeddings(path: &Path, items: &[String], weights: &F32Tensor) -> Result<()> {
    use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    let d = usize::try_from(weights.shape.get(1).copied().unwrap_or(0)).unwrap_or(0);
    let n = items.len();
    let values = Float32Array::from(weights.data[d..(n + 1) * d].to_vec());
    let child = Arc::new(Field::new("item", DataType::Float32, false));
    let d32 = i32::try_from(d).map_err(|e| Error::internal(e.to_string()))?;
    let vectors = FixedSizeListArray::try_new(child.clone(), d32, Arc::new(values), None)
        .map_err(|e| arrow_err(path, &e))?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("item", DataType::Utf8, false),
        Field::new("vector", DataType::FixedSizeList(child, d32), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(items)) as ArrayRef,
            Arc::new(vectors),
        ],
    )
    .map_err(|e| arrow_err(path, &e));
    write_parquet(path, schema, std::iter::once(batch))
}

/// `user`, `rank` (1-based), `item`, `score`, in user order then rank.
fn write_recommendations(
    path: &Path,
    ds: &Dataset,
    users: &[UserIdx],
    recs: &[Vec<(ItemIdx, f32)>],
) -> Result<()> {
    use arrow::array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("user", DataType::Utf8, false),
        Field::new("rank", DataType::UInt32, false),
        Field::new("item", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
    ]));
    let batches = users
        .chunks(USERS_PER_RECORD_BATCH)
        .zip(recs.chunks(USERS_PER_RECORD_BATCH))
        .map(|(us, rs)| {
            let user = StringArray::from_iter_values(
                us.iter()
                    .zip(rs)
                    .flat_map(|(&u, r)| std::iter::repeat_n(&ds.user_raw[u as usize], r.len())),
            );
            let rank = UInt32Array::from_iter_values(
                rs.iter()
                    .flat_map(|r| (1..=r.len()).map(|x| u32::try_from(x).unwrap_or(u32::MAX))),
            );
            let item = StringArray::from_iter_values(
                rs.iter().flatten().map(|&(i, _)| &ds.item_raw[i as usize]),
            );
            let score = Float32Array::from_iter_values(rs.iter().flatten().map(|&(_, s)| s));
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(user) as ArrayRef,
                    Arc::new(rank),
                    Arc::new(item),
                    Arc::new(score),
                ],
            )
            .map_err(|e| arrow_err(path, &e))
        });
    write_parquet(path, schema.clone(), batches)
}

/// Export the train stage's best model (`job.input/best.ot`) into `job.out`.
pub fn export(job: &Job, x: &ExportSettings) -> Result<ExportReport> {
    let t0 = Instant::now();
    let device = crate::resolve_device(job.device)?;
    tch::set_num_threads(i32::try_from(job.threads).unwrap_or(1));
    let (ds, cfg) = (job.ds, job.cfg);
    let users = select_users(ds, x.users_path.as_deref())?;
    let mut vs = nn::VarStore::new(device);
    let model = Model::new(&vs.root(), cfg, ds.n_items);
    let path = job.input.join(crate::BEST_MODEL);
    let named = checkpoint::load_named(&path)?;
    checkpoint::load_model_tensors(&mut vs, &named, &path)?;

    let st = model_file(&vs, cfg, &ds.item_raw)?;
    // The table the model scores items with: what a retrieval index needs.
    let items = st
        .tensors
        .get(OUT_ITEMS_TENSOR)
        .or_else(|| st.tensors.get(ITEMS_TENSOR))
        .ok_or_else(|| Error::internal("the model has no item embeddings"))?;
    write_embeddings(
        &job.out.join(EMBEDDINGS_FILE),
        ds.item_raw.get(1..).unwrap_or_default(),
        items,
    )?;
    st.write(&job.out.join(MODEL_FILE))?;

    job.progress.start("export", users.len() as u64);
    let recs = recommend(
        &model,
        ds,
        &users,
        x.top_k as usize,
        x.exclude_history,
        x.batch_size as usize,
        cfg.history_len as usize,
        device,
        job.progress,
    )?;
    job.progress.finish();
    write_recommendations(&job.out.join(RECOMMENDATIONS_FILE), ds, &users, &recs)?;
    let seconds = t0.elapsed().as_secs_f64();
    let without = recs.iter().filter(|r| r.is_empty()).count() as u64;
    #[expect(clippy::cast_precision_loss, reason = "rates")]
    Ok(ExportReport {
        users: users.len() as u64 - without,
        users_without_history: without,
        items: u64::from(ds.n_items),
        k: x.top_k,
        exclude_history: x.exclude_history,
        recommendations: recs.iter().map(|r| r.len() as u64).sum(),
        dim: cfg.dim,
        device: format!("{device:?}"),
        seconds,
        users_per_second: users.len() as f64 / seconds.max(1e-9),
    })
}

/// A freshly initialised model saved as the train stage saves its best model
/// (benchmarks: export's speed does not depend on what the model learnt).
pub fn save_initial_model(cfg: &TrainSettings, n_items: u32, path: &Path) -> Result<()> {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Model::new(&vs.root(), cfg, n_items);
    checkpoint::save_named(path, &checkpoint::model_tensors(&vs))
}

/// Metadata of an exported model file, by key (for readers of the model file).
pub fn metadata_value<'a>(
    meta: &'a BTreeMap<String, String>,
    key: &str,
    path: &Path,
) -> Result<&'a str> {
    meta.get(key)
        .map(String::as_str)
        .ok_or_else(|| Error::artifact(path, format!("metadata lacks {key:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use gnno_core::progress::NoProgress;

    /// Users: 0 = [1, 2, 3], 1 = [4], 2 = [2, 5]; 6 items.
    fn ds() -> Dataset {
        Dataset {
            n_items: 6,
            train_offsets: vec![0, 3, 4, 6],
            train_items: vec![1, 2, 3, 4, 2, 5],
            dev: vec![0; 3],
            test: vec![0; 3],
            dev_offsets: vec![0; 4],
            test_offsets: vec![0; 4],
            item_raw: ["<pad>", "a", "b", "c", "d", "e", "f"]
                .map(str::to_owned)
                .to_vec(),
            user_raw: ["x", "y", "z"].map(str::to_owned).to_vec(),
            ..Dataset::default()
        }
    }

    #[test]
    fn the_users_file_is_checked_line_by_line() {
        let ds = ds();
        let t = tempfile::tempdir().expect("tempdir");
        let f = t.path().join("users.txt");
        std::fs::write(&f, "z\n\nx\r\n").expect("write");
        assert_eq!(select_users(&ds, Some(&f)).expect("users"), vec![2, 0]);
        assert_eq!(select_users(&ds, None).expect("users"), vec![0, 1, 2]);
        std::fs::write(&f, "x\nq\n").expect("write");
        let e = select_users(&ds, Some(&f))
            .expect_err("unknown")
            .to_string();
        assert!(e.contains("users.txt:2") && e.contains("\"q\""), "{e}");
        std::fs::write(&f, "x\ny\nx\n").expect("write");
        let e = select_users(&ds, Some(&f)).expect_err("twice").to_string();
        assert!(e.contains("users.txt:3") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn recommendations_exclude_history_and_break_ties_by_index() {
        let ds = ds();
        let mut cfg = crate::tests::settings();
        cfg.backbone = gnno_core::config::Backbone::Sasrec;
        cfg.dim = 4;
        cfg.heads = 1;
        cfg.layers = 1;
        cfg.history_len = 2;
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), &cfg, ds.n_items);
        // Every item lies on one axis: a, b, c at -5, d, e, f at +5, so the score
        // order is one of the two groups first (or all equal), with ties inside.
        tch::no_grad(|| {
            let mut w = model.items.ws.shallow_clone();
            let rows = Tensor::from_slice(&[
                0.0f32, 0., 0., 0., // pad
                -5., 0., 0., 0., // a
                -5., 0., 0., 0., // b
                -5., 0., 0., 0., // c
                5., 0., 0., 0., // d
                5., 0., 0., 0., // e
                5., 0., 0., 0., // f
                9., 9., 9., 9., // mask token: never a candidate
            ])
            .view([8, 4]);
            w.copy_(&rows);
        });
        let users = [0u32, 1, 2];
        let recs = recommend(&model, &ds, &users, 3, true, 2, 2, Device::Cpu, &NoProgress)
            .expect("recommend");
        for (u, r) in recs.iter().enumerate() {
            let hist = ds.full_seq(users[u]);
            assert!(r.iter().all(|(i, _)| !hist.contains(i)), "user {u}: {r:?}");
            assert!(r.iter().all(|&(i, _)| (1..=6).contains(&i)), "{r:?}");
            assert!(r.windows(2).all(|w| w[0].1 >= w[1].1), "{r:?}");
            assert_eq!(r.len(), 3);
        }
        // User 2 (history b, e): candidates a c d f, in two tied pairs.
        let full = recommend(&model, &ds, &[2], 6, true, 8, 2, Device::Cpu, &NoProgress)
            .expect("recommend");
        let items: Vec<ItemIdx> = full[0].iter().map(|x| x.0).collect();
        let up = items[0] == 4;
        assert_eq!(
            items,
            if up {
                vec![4, 6, 1, 3]
            } else {
                vec![1, 3, 4, 6]
            },
            "only 4 items are not in the history; ties in index order: {full:?}"
        );
        // A cut inside the top tie keeps the lower index.
        let one = recommend(&model, &ds, &[2], 1, true, 8, 2, Device::Cpu, &NoProgress)
            .expect("recommend");
        assert_eq!(one[0], vec![full[0][0]]);
        assert_eq!(one[0][0].0, if up { 4 } else { 1 });
        // Without exclusion the history items come back; all 6 fit.
        let all = recommend(&model, &ds, &[2], 10, false, 8, 2, Device::Cpu, &NoProgress)
            .expect("recommend");
        let items: Vec<ItemIdx> = all[0].iter().map(|x| x.0).collect();
        assert_eq!(
            items,
            if up {
                vec![4, 5, 6, 1, 2, 3]
            } else {
                vec![1, 2, 3, 4, 5, 6]
            }
        );
    }
}

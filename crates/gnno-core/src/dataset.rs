//! The canonical interaction table written by `ingest`, read back by every later
//! stage. Schemas are in docs/FORMATS.md; this module owns the file names and the
//! column names so no stage hand-rolls them.

use crate::error::{Error, IoContext, Result};
use crate::{ItemIdx, Split, UserIdx};
use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, UInt32Type, UInt8Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::path::Path;

pub const INTERACTIONS_FILE: &str = "interactions.parquet";
pub const ITEMS_FILE: &str = "items.parquet";
pub const USERS_FILE: &str = "users.parquet";

pub mod col {
    pub const USER: &str = "user";
    pub const ITEM: &str = "item";
    pub const TIMESTAMP: &str = "timestamp";
    pub const POSITION: &str = "position";
    pub const SPLIT: &str = "split";
    pub const RAW_ID: &str = "raw_id";
    pub const COUNT: &str = "count";
}

/// Read every record batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let f = std::fs::File::open(path).at(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.with_batch_size(1 << 16).build())
        .map_err(|e| Error::artifact(path, format!("not a readable Parquet file: {e}")))?;
    reader
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::artifact(path, format!("damaged Parquet data: {e}")))
}

/// A named column of a batch, or an error naming the file and the column.
pub fn column<'a>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| Error::artifact(path, format!("missing column {name:?}")))
}

fn typed<'a, T: arrow::datatypes::ArrowPrimitiveType>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a arrow::array::PrimitiveArray<T>> {
    let c = column(batch, name, path)?;
    c.as_primitive_opt::<T>().ok_or_else(|| {
        Error::artifact(
            path,
            format!(
                "column {name:?} has type {}, expected {}",
                c.data_type(),
                T::DATA_TYPE
            ),
        )
    })
}

/// A string column as owned strings, whatever Arrow string type the writer chose.
fn strings(batch: &RecordBatch, name: &str, path: &Path) -> Result<Vec<String>> {
    let c = column(batch, name, path)?;
    let c = arrow::compute::cast(c, &DataType::Utf8)
        .map_err(|e| Error::artifact(path, format!("column {name:?} is not text: {e}")))?;
    let a = c.as_string::<i32>();
    Ok((0..a.len()).map(|i| a.value(i).to_owned()).collect())
}

/// Train sequences and held-out items of every user, plus the id maps.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub n_items: u32,
    /// `train_offsets[u]..train_offsets[u+1]` indexes `train_items` for user u.
    pub train_offsets: Vec<usize>,
    pub train_items: Vec<ItemIdx>,
    /// Dev and test item per user; 0 when the user has none.
    pub dev: Vec<ItemIdx>,
    pub test: Vec<ItemIdx>,
    /// Raw id of item i at index i (index 0 is the padding placeholder).
    pub item_raw: Vec<String>,
    pub user_raw: Vec<String>,
}

impl Dataset {
    pub fn n_users(&self) -> usize {
        self.dev.len()
    }

    pub fn train_seq(&self, u: UserIdx) -> &[ItemIdx] {
        let u = u as usize;
        &self.train_items[self.train_offsets[u]..self.train_offsets[u + 1]]
    }

    /// Training instances: every train position k >= 1 (history non-empty).
    pub fn n_instances(&self) -> u64 {
        (0..self.n_users())
            .map(|u| (self.train_offsets[u + 1] - self.train_offsets[u]).saturating_sub(1) as u64)
            .sum()
    }

    /// Training instances, numbered in user then position order.
    pub fn instances(&self) -> Instances {
        let mut s = Instances::default();
        for u in 0..self.n_users() {
            let (a, b) = (self.train_offsets[u], self.train_offsets[u + 1]);
            for k in a + 1..b {
                s.user.push(u32::try_from(u).unwrap_or(u32::MAX));
                s.pos.push(u32::try_from(k - a).unwrap_or(u32::MAX));
                s.target.push(self.train_items[k]);
            }
        }
        s
    }

    /// The history of an instance: the last `max_len` train items before its position.
    pub fn history(&self, user: UserIdx, pos: u32, max_len: usize) -> &[ItemIdx] {
        let seq = self.train_seq(user);
        let end = pos as usize;
        &seq[end.saturating_sub(max_len)..end]
    }

    /// Load the ingest stage's output folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let items = load_id_map(&dir.join(ITEMS_FILE), col::ITEM)?;
        let users = load_id_map(&dir.join(USERS_FILE), col::USER)?;
        let mut item_raw = vec![String::from("<pad>")];
        item_raw.extend(items);
        let n_items =
            u32::try_from(item_raw.len() - 1).map_err(|_| Error::internal("too many items"))?;
        let n_users = users.len();
        let path = dir.join(INTERACTIONS_FILE);
        let mut ds = Self {
            n_items,
            train_offsets: vec![0; n_users + 1],
            train_items: Vec::new(),
            dev: vec![0; n_users],
            test: vec![0; n_users],
            item_raw,
            user_raw: users,
        };
        let mut counts = vec![0usize; n_users];
        let mut rows: Vec<(UserIdx, u32, ItemIdx)> = Vec::new();
        for batch in read_parquet(&path)? {
            let u = typed::<UInt32Type>(&batch, col::USER, &path)?;
            let it = typed::<UInt32Type>(&batch, col::ITEM, &path)?;
            let pos = typed::<UInt32Type>(&batch, col::POSITION, &path)?;
            let sp = typed::<UInt8Type>(&batch, col::SPLIT, &path)?;
            let _ = typed::<Int64Type>(&batch, col::TIMESTAMP, &path)?;
            for r in 0..batch.num_rows() {
                let (uu, ii) = (u.value(r), it.value(r));
                if uu as usize >= n_users || ii == 0 || ii > n_items {
                    return Err(Error::artifact(
                        &path,
                        format!("row with user {uu}, item {ii} is outside the id maps"),
                    ));
                }
                match Split::from_code(sp.value(r)) {
                    Some(Split::Train) => {
                        counts[uu as usize] += 1;
                        rows.push((uu, pos.value(r), ii));
                    }
                    Some(Split::Dev) => ds.dev[uu as usize] = ii,
                    Some(Split::Test) => ds.test[uu as usize] = ii,
                    None => {
                        return Err(Error::artifact(
                            &path,
                            format!("unknown split code {}", sp.value(r)),
                        ))
                    }
                }
            }
        }
        // Rows are written sorted by (user, position); sort anyway so a reordered
        // file still yields time-ordered sequences.
        if !rows
            .windows(2)
            .all(|w| (w[0].0, w[0].1) <= (w[1].0, w[1].1))
        {
            rows.sort_unstable_by_key(|r| (r.0, r.1));
        }
        for (u, c) in counts.iter().enumerate() {
            ds.train_offsets[u + 1] = ds.train_offsets[u] + c;
        }
        ds.train_items = rows.into_iter().map(|r| r.2).collect();
        Ok(ds)
    }
}

/// Training instances (GNNO.md §1): every train position k ≥ 1 of every user, in
/// user then position order; the index in these vectors is the instance id.
#[derive(Debug, Default, Clone)]
pub struct Instances {
    pub user: Vec<UserIdx>,
    /// Position of the target in the user's train sequence (≥ 1).
    pub pos: Vec<u32>,
    pub target: Vec<ItemIdx>,
}

impl Instances {
    pub fn len(&self) -> usize {
        self.user.len()
    }
    pub fn is_empty(&self) -> bool {
        self.user.is_empty()
    }
}

/// An id map file: index column (0.. or 1..) and raw id; returns raw ids in index order.
fn load_id_map(path: &Path, index_col: &str) -> Result<Vec<String>> {
    let mut pairs = Vec::new();
    for batch in read_parquet(path)? {
        let idx = typed::<UInt32Type>(&batch, index_col, path)?;
        let raw = strings(&batch, col::RAW_ID, path)?;
        pairs.extend(idx.values().iter().copied().zip(raw));
    }
    pairs.sort_by_key(|p| p.0);
    let first = if index_col == col::ITEM { 1 } else { 0 };
    for (k, (i, _)) in pairs.iter().enumerate() {
        if *i as usize != k + first {
            return Err(Error::artifact(
                path,
                format!("ids are not dense: expected {}, found {i}", k + first),
            ));
        }
    }
    Ok(pairs.into_iter().map(|p| p.1).collect())
}

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
///
/// The evaluation protocol (docs/FORMATS.md, "Evaluation protocol"): each user has
/// at most one evaluated dev row and one evaluated test row, the earliest of each
/// split; the history of the dev row is the user's train rows, the history of the
/// test row the train rows followed by every dev row. A user with held-out rows
/// but no train row is not evaluated (counted in `users_without_train`).
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub n_items: u32,
    /// `train_offsets[u]..train_offsets[u+1]` indexes `train_items` for user u.
    pub train_offsets: Vec<usize>,
    pub train_items: Vec<ItemIdx>,
    /// The evaluated dev and test item per user; 0 when the user has none.
    pub dev: Vec<ItemIdx>,
    pub test: Vec<ItemIdx>,
    /// Every dev row of user u in time order: `dev_offsets[u]..dev_offsets[u+1]`
    /// indexes `dev_items` (leave-one-out: just the evaluated one).
    pub dev_offsets: Vec<usize>,
    pub dev_items: Vec<ItemIdx>,
    /// Every test row of user u in time order, likewise (`test` holds the first).
    pub test_offsets: Vec<usize>,
    pub test_items: Vec<ItemIdx>,
    /// Users with dev or test rows but no train row: left out of evaluation.
    pub users_without_train: u64,
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

    /// Every user's train sequence, in user order.
    pub fn train_seqs(&self) -> impl Iterator<Item = &[ItemIdx]> + '_ {
        self.train_offsets
            .windows(2)
            .map(|w| &self.train_items[w[0]..w[1]])
    }

    /// Every dev row of a user, in time order.
    pub fn dev_seq(&self, u: UserIdx) -> &[ItemIdx] {
        let u = u as usize;
        &self.dev_items[self.dev_offsets[u]..self.dev_offsets[u + 1]]
    }

    /// Every item of a user's sequence in time order: train, then dev, then test
    /// rows (the splits are contiguous in time under both split modes). What a
    /// served model recommends from; users without train rows included.
    pub fn full_seq(&self, u: UserIdx) -> Vec<ItemIdx> {
        let mut h = self.train_seq(u).to_vec();
        h.extend_from_slice(self.dev_seq(u));
        let u = u as usize;
        if let Some(w) = self.test_offsets.get(u..u + 2) {
            h.extend_from_slice(&self.test_items[w[0]..w[1]]);
        }
        h
    }

    /// The history the evaluated item of `split` is ranked from (oldest first), or
    /// `None` when the user has no evaluated item of that split. Train instances
    /// are not evaluated this way: `None` for `Split::Train`.
    pub fn eval_history(&self, u: UserIdx, split: Split) -> Option<Vec<ItemIdx>> {
        let target = match split {
            Split::Train => 0,
            Split::Dev => self.dev[u as usize],
            Split::Test => self.test[u as usize],
        };
        if target == 0 {
            return None;
        }
        let mut h = self.train_seq(u).to_vec();
        if split == Split::Test {
            h.extend_from_slice(self.dev_seq(u));
        }
        Some(h)
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

    /// Load the ingest stage's output folder, checking every id against the id maps
    /// and every split code; errors name the file.
    pub fn load(dir: &Path) -> Result<Self> {
        let items = load_id_map(&dir.join(ITEMS_FILE), col::ITEM)?;
        let users = load_id_map(&dir.join(USERS_FILE), col::USER)?;
        let mut item_raw = vec![String::from("<pad>")];
        item_raw.extend(items);
        let n_items = u32::try_from(item_raw.len() - 1).map_err(|_| {
            Error::artifact(dir.join(ITEMS_FILE), "more items than a u32 index holds")
        })?;
        let n_users = users.len();
        u32::try_from(n_users).map_err(|_| {
            Error::artifact(dir.join(USERS_FILE), "more users than a u32 index holds")
        })?;
        let path = dir.join(INTERACTIONS_FILE);
        // (user, position, item) per split.
        let mut rows: [Vec<(UserIdx, u32, ItemIdx)>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for batch in read_parquet(&path)? {
            let u = typed::<UInt32Type>(&batch, col::USER, &path)?;
            let it = typed::<UInt32Type>(&batch, col::ITEM, &path)?;
            let pos = typed::<UInt32Type>(&batch, col::POSITION, &path)?;
            let sp = typed::<UInt8Type>(&batch, col::SPLIT, &path)?;
            let _ = typed::<Int64Type>(&batch, col::TIMESTAMP, &path)?;
            for c in [
                u as &dyn Array,
                it as &dyn Array,
                pos as &dyn Array,
                sp as &dyn Array,
            ] {
                if c.null_count() > 0 {
                    return Err(Error::artifact(&path, "a column holds nulls"));
                }
            }
            for r in 0..batch.num_rows() {
                let (uu, ii) = (u.value(r), it.value(r));
                if uu as usize >= n_users || ii == 0 || ii > n_items {
                    return Err(Error::artifact(
                        &path,
                        format!(
                            "row with user {uu}, item {ii} is outside the id maps \
                             (users 0..{n_users}, items 1..={n_items})"
                        ),
                    ));
                }
                let split = Split::from_code(sp.value(r)).ok_or_else(|| {
                    Error::artifact(&path, format!("unknown split code {}", sp.value(r)))
                })?;
                rows[split as usize].push((uu, pos.value(r), ii));
            }
        }
        // Rows are written sorted by (user, position); sort anyway so a reordered
        // file still yields time-ordered sequences.
        for r in &mut rows {
            if !r.windows(2).all(|w| (w[0].0, w[0].1) <= (w[1].0, w[1].1)) {
                r.sort_unstable_by_key(|x| (x.0, x.1));
            }
        }
        let [train, dev, test] = rows;
        let (train_offsets, train_items) = csr(&train, n_users);
        let (dev_offsets, dev_items) = csr(&dev, n_users);
        let (test_offsets, test_items) = csr(&test, n_users);
        let mut ds = Self {
            n_items,
            dev: vec![0; n_users],
            test: vec![0; n_users],
            users_without_train: 0,
            item_raw,
            user_raw: users,
            train_offsets,
            train_items,
            dev_offsets,
            dev_items,
            test_offsets,
            test_items,
        };
        for u in 0..n_users {
            let has_train = ds.train_offsets[u + 1] > ds.train_offsets[u];
            let first_dev = (ds.dev_offsets[u + 1] > ds.dev_offsets[u])
                .then(|| ds.dev_items[ds.dev_offsets[u]]);
            let first_test = (ds.test_offsets[u + 1] > ds.test_offsets[u])
                .then(|| ds.test_items[ds.test_offsets[u]]);
            if !has_train {
                if first_dev.is_some() || first_test.is_some() {
                    ds.users_without_train += 1;
                }
                continue;
            }
            ds.dev[u] = first_dev.unwrap_or(0);
            ds.test[u] = first_test.unwrap_or(0);
        }
        Ok(ds)
    }
}

/// Offsets and items of rows sorted by (user, position), per user.
fn csr(rows: &[(UserIdx, u32, ItemIdx)], n_users: usize) -> (Vec<usize>, Vec<ItemIdx>) {
    let mut offsets = vec![0usize; n_users + 1];
    for r in rows {
        offsets[r.0 as usize + 1] += 1;
    }
    for u in 0..n_users {
        offsets[u + 1] += offsets[u];
    }
    (offsets, rows.iter().map(|r| r.2).collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray, UInt32Array, UInt8Array};
    use std::sync::Arc;

    fn write(path: &Path, cols: Vec<(&str, ArrayRef)>) {
        let batch = RecordBatch::try_from_iter(cols).expect("batch");
        let f = std::fs::File::create(path).expect("create");
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
    }

    /// An ingest folder with `n_items` items, the given users, and rows of
    /// (user, item, position, split).
    fn folder(n_items: u32, users: &[&str], rows: &[(u32, u32, u32, u8)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path();
        let ids: Vec<u32> = (1..=n_items).collect();
        write(
            &d.join(ITEMS_FILE),
            vec![
                (
                    col::ITEM,
                    Arc::new(UInt32Array::from(ids.clone())) as ArrayRef,
                ),
                (
                    col::RAW_ID,
                    Arc::new(StringArray::from_iter_values(
                        ids.iter().map(|i| format!("i{i}")),
                    )) as ArrayRef,
                ),
            ],
        );
        write(
            &d.join(USERS_FILE),
            vec![
                (
                    col::USER,
                    Arc::new(UInt32Array::from_iter_values(
                        0..u32::try_from(users.len()).expect("n"),
                    )) as ArrayRef,
                ),
                (
                    col::RAW_ID,
                    Arc::new(StringArray::from_iter_values(users.iter())) as ArrayRef,
                ),
            ],
        );
        let c = |f: fn(&(u32, u32, u32, u8)) -> u32| rows.iter().map(f).collect::<Vec<u32>>();
        write(
            &d.join(INTERACTIONS_FILE),
            vec![
                (
                    col::USER,
                    Arc::new(UInt32Array::from(c(|r| r.0))) as ArrayRef,
                ),
                (
                    col::ITEM,
                    Arc::new(UInt32Array::from(c(|r| r.1))) as ArrayRef,
                ),
                (
                    col::TIMESTAMP,
                    Arc::new(Int64Array::from_iter_values(
                        rows.iter().map(|r| i64::from(r.2)),
                    )) as ArrayRef,
                ),
                (
                    col::POSITION,
                    Arc::new(UInt32Array::from(c(|r| r.2))) as ArrayRef,
                ),
                (
                    col::SPLIT,
                    Arc::new(UInt8Array::from_iter_values(rows.iter().map(|r| r.3))) as ArrayRef,
                ),
            ],
        );
        t
    }

    #[test]
    fn time_cutoff_protocol_evaluates_the_earliest_held_out_rows_and_skips_users_without_train() {
        // User a: train 1 2, dev 3 4, test 5 6. User b: only dev and test rows.
        // User c: train 1, test 2 (no dev row). User d: train only.
        let t = folder(
            6,
            &["a", "b", "c", "d"],
            &[
                (0, 1, 0, 0),
                (0, 2, 1, 0),
                (0, 3, 2, 1),
                (0, 4, 3, 1),
                (0, 5, 4, 2),
                (0, 6, 5, 2),
                (1, 3, 0, 1),
                (1, 4, 1, 2),
                (2, 1, 0, 0),
                (2, 2, 1, 2),
                (3, 1, 0, 0),
                (3, 2, 1, 0),
            ],
        );
        let ds = Dataset::load(t.path()).expect("load");
        assert_eq!(
            (ds.dev[0], ds.test[0]),
            (3, 5),
            "the earliest of each split"
        );
        assert_eq!(ds.eval_history(0, Split::Dev), Some(vec![1, 2]));
        assert_eq!(
            ds.eval_history(0, Split::Test),
            Some(vec![1, 2, 3, 4]),
            "every dev row precedes the test row"
        );
        assert_eq!(
            (ds.dev[1], ds.test[1]),
            (0, 0),
            "no train row: not evaluated"
        );
        assert_eq!(ds.users_without_train, 1);
        assert_eq!(ds.eval_history(1, Split::Test), None);
        assert_eq!((ds.dev[2], ds.test[2]), (0, 2));
        assert_eq!(
            ds.eval_history(2, Split::Test),
            Some(vec![1]),
            "no padding item stands in for a missing dev row"
        );
        assert_eq!(ds.eval_history(3, Split::Dev), None);
        assert_eq!(
            ds.full_seq(0),
            vec![1, 2, 3, 4, 5, 6],
            "every row, in time order"
        );
        assert_eq!(ds.full_seq(1), vec![3, 4], "users without train rows too");
        assert_eq!(ds.full_seq(2), vec![1, 2]);
        assert_eq!(
            ds.train_seqs().collect::<Vec<_>>(),
            vec![&[1, 2][..], &[], &[1], &[1, 2]]
        );
        assert_eq!(ds.n_instances(), 2);
    }

    #[test]
    fn ids_outside_the_maps_and_bad_split_codes_are_refused_naming_the_file() {
        for (rows, needle) in [
            (vec![(0, 7, 0, 0)], "item 7 is outside the id maps"),
            (vec![(0, 0, 0, 0)], "item 0 is outside the id maps"),
            (vec![(5, 1, 0, 0)], "user 5, item 1 is outside the id maps"),
            (vec![(0, 1, 0, 9)], "unknown split code 9"),
        ] {
            let t = folder(3, &["a"], &rows);
            let e = Dataset::load(t.path()).expect_err(needle).to_string();
            assert!(e.contains(INTERACTIONS_FILE) && e.contains(needle), "{e}");
        }
    }
}

//! The ingest stage: raw interaction logs to the canonical, cleaned, time-ordered,
//! re-indexed and split Parquet tables (docs/FORMATS.md, "ingest").
//!
//! Parsing is a streaming pass of our own (it must name file and line of a bad row);
//! de-duplication, ordering and the Parquet output go through polars. This crate must
//! not know about any later stage.

pub mod parse;

use gnno_core::config::{IngestSettings, ShortUsers, SplitMode};
use gnno_core::dataset::{col, INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE};
use gnno_core::error::{Error, IoContext, Result};
use gnno_core::progress::Progress;
use gnno_core::Split;
use polars::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Figures of one ingest run, stored in the manifest's report.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct IngestReport {
    pub files: Vec<String>,
    pub rows_read: u64,
    pub bad_rows: u64,
    pub bad_row_examples: Vec<String>,
    pub dropped_missing: u64,
    pub dropped_duplicates: u64,
    pub dropped_rating: u64,
    pub dropped_repeat_pairs: u64,
    pub dropped_kcore: u64,
    pub kcore_rounds: u32,
    pub dropped_short_users: u64,
    pub rows_out: u64,
    pub users: u64,
    pub items: u64,
    pub train_rows: u64,
    pub dev_rows: u64,
    pub test_rows: u64,
    /// Train positions with a non-empty history (the training instances).
    pub training_instances: u64,
}

fn pl(e: PolarsError) -> Error {
    Error::internal(format!("polars: {e}"))
}

/// Run the stage: read `cfg.inputs` (relative to `base`), write the tables into `out`.
pub fn run(
    cfg: &IngestSettings,
    base: &Path,
    out: &Path,
    progress: &dyn Progress,
) -> Result<IngestReport> {
    let files = parse::resolve_inputs(&cfg.inputs, base)?;
    let raw = parse::read_all(cfg, &files, progress)?;
    let mut report = IngestReport {
        files: files.iter().map(|f| f.display().to_string()).collect(),
        rows_read: raw.rows_read,
        bad_rows: raw.bad_rows,
        bad_row_examples: raw.bad_examples.clone(),
        dropped_missing: raw.missing,
        ..IngestReport::default()
    };
    let n_raw = raw.user.len();
    let row: Vec<u64> = (0..n_raw as u64).collect();
    let mut df = DataFrame::new_infer_height(vec![
        Column::new("u".into(), raw.user),
        Column::new("i".into(), raw.item),
        Column::new("t".into(), raw.ts),
        Column::new("r".into(), raw.rating),
        Column::new("row".into(), row),
    ])
    .map_err(pl)?;

    // Exact duplicates (same user, item, time and rating): keep the first.
    let before = df.height();
    df = df
        .lazy()
        .unique_stable_generic(
            Some(vec![col("u"), col("i"), col("t"), col("r")]),
            UniqueKeepStrategy::First,
        )
        .collect()
        .map_err(pl)?;
    report.dropped_duplicates = (before - df.height()) as u64;

    if let Some(min) = cfg.min_rating {
        let before = df.height();
        #[expect(clippy::cast_possible_truncation, reason = "ratings are small")]
        let min = min as f32;
        // Rows without a rating column have NaN ratings and are kept.
        df = df
            .lazy()
            .filter(col("r").lt(lit(min)).not().or(col("r").is_nan()))
            .collect()
            .map_err(pl)?;
        report.dropped_rating = (before - df.height()) as u64;
    }

    // Per user by time; ties keep raw-log order.
    df = df
        .lazy()
        .sort(
            ["u", "t", "row"],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .collect()
        .map_err(pl)?;

    if cfg.dedup_pairs {
        let before = df.height();
        df = df
            .lazy()
            .unique_stable_generic(Some(vec![col("u"), col("i")]), UniqueKeepStrategy::First)
            .collect()
            .map_err(pl)?;
        report.dropped_repeat_pairs = (before - df.height()) as u64;
    }

    let users = to_vec_u32(&df, "u")?;
    let items = to_vec_u32(&df, "i")?;
    let n_users = raw.users.names.len();
    let n_items = raw.items.names.len();
    let (mut keep, rounds) = kcore(
        &users,
        &items,
        n_users,
        n_items,
        cfg.user_core,
        cfg.item_core,
    );
    report.kcore_rounds = rounds;
    report.dropped_kcore = keep.iter().filter(|k| !**k).count() as u64;

    // Users too short for leave-one-out.
    let mut ucount = vec![0u32; n_users];
    for (k, &u) in keep.iter().zip(&users) {
        if *k {
            ucount[u as usize] += 1;
        }
    }
    if cfg.split == SplitMode::LeaveOneOut && cfg.short_users == ShortUsers::Drop {
        for (k, &u) in keep.iter_mut().zip(&users) {
            if *k && ucount[u as usize] < 3 {
                *k = false;
                report.dropped_short_users += 1;
            }
        }
    }
    let mask: BooleanChunked = keep.iter().copied().collect();
    df = df.filter(&mask).map_err(pl)?;
    if df.height() == 0 {
        return Err(Error::input(
            report.files.join(", "),
            "no interaction is left after cleaning",
        )
        .with_hint("lower ingest.user-core / ingest.item-core, or check the column mapping"));
    }

    // Dense re-indexing that keeps first-appearance order: the interner numbered ids
    // by first appearance, so ranking the surviving codes preserves it.
    let users = to_vec_u32(&df, "u")?;
    let items = to_vec_u32(&df, "i")?;
    let ts = df
        .column("t")
        .and_then(|c| c.i64().map(|a| a.into_no_null_iter().collect::<Vec<i64>>()))
        .map_err(pl)?;
    let umap = compact(&users, n_users, 0);
    let imap = compact(&items, n_items, 1);
    let new_u: Vec<u32> = users.iter().map(|&u| umap[u as usize]).collect();
    let new_i: Vec<u32> = items.iter().map(|&i| imap[i as usize]).collect();

    // Positions and splits. Rows are sorted by (old user, time, row); old and new
    // user ids have the same order, so each user's rows are contiguous.
    let n = new_u.len();
    let mut position = vec![0u32; n];
    let mut split = vec![Split::Train as u8; n];
    let mut start = 0;
    while start < n {
        let mut end = start;
        while end < n && new_u[end] == new_u[start] {
            end += 1;
        }
        let len = end - start;
        for (k, p) in position[start..end].iter_mut().enumerate() {
            *p = u32::try_from(k).unwrap_or(u32::MAX);
        }
        match cfg.split {
            SplitMode::LeaveOneOut if len >= 3 => {
                split[end - 1] = Split::Test as u8;
                split[end - 2] = Split::Dev as u8;
            }
            SplitMode::LeaveOneOut => {}
            SplitMode::TimeCutoff => {
                let (dev_from, test_from) = (
                    cfg.dev_from.unwrap_or(i64::MAX),
                    cfg.test_from.unwrap_or(i64::MAX),
                );
                for r in start..end {
                    split[r] = if ts[r] >= test_from {
                        Split::Test as u8
                    } else if ts[r] >= dev_from {
                        Split::Dev as u8
                    } else {
                        Split::Train as u8
                    };
                }
            }
        }
        let train_len = split[start..end]
            .iter()
            .filter(|&&s| s == Split::Train as u8)
            .count();
        report.training_instances += train_len.saturating_sub(1) as u64;
        start = end;
    }
    report.rows_out = n as u64;
    report.train_rows = split.iter().filter(|&&s| s == 0).count() as u64;
    report.dev_rows = split.iter().filter(|&&s| s == 1).count() as u64;
    report.test_rows = split.iter().filter(|&&s| s == 2).count() as u64;

    let mut inter = DataFrame::new_infer_height(vec![
        Column::new(col::USER.into(), new_u.clone()),
        Column::new(col::ITEM.into(), new_i.clone()),
        Column::new(col::TIMESTAMP.into(), ts),
        Column::new(col::POSITION.into(), position),
        Column::new(col::SPLIT.into(), split),
    ])
    .map_err(pl)?;
    write_parquet(&mut inter, &out.join(INTERACTIONS_FILE))?;

    let mut items_df = id_map_frame(col::ITEM, &imap, &raw.items.names, &new_i, 1)?;
    write_parquet(&mut items_df, &out.join(ITEMS_FILE))?;
    let mut users_df = id_map_frame(col::USER, &umap, &raw.users.names, &new_u, 0)?;
    write_parquet(&mut users_df, &out.join(USERS_FILE))?;
    report.users = users_df.height() as u64;
    report.items = items_df.height() as u64;
    Ok(report)
}

fn to_vec_u32(df: &DataFrame, name: &str) -> Result<Vec<u32>> {
    df.column(name)
        .and_then(|c| c.u32().map(|a| a.into_no_null_iter().collect()))
        .map_err(pl)
}

/// Iterated k-core: drop users with fewer than `uk` and items with fewer than `ik`
/// interactions until nothing changes. Returns the keep mask and the rounds taken.
pub fn kcore(
    users: &[u32],
    items: &[u32],
    n_users: usize,
    n_items: usize,
    uk: u32,
    ik: u32,
) -> (Vec<bool>, u32) {
    let mut keep = vec![true; users.len()];
    if uk == 0 && ik == 0 {
        return (keep, 0);
    }
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut uc = vec![0u32; n_users];
        let mut ic = vec![0u32; n_items];
        for ((k, &u), &i) in keep.iter().zip(users).zip(items) {
            if *k {
                uc[u as usize] += 1;
                ic[i as usize] += 1;
            }
        }
        let mut changed = false;
        for ((k, &u), &i) in keep.iter_mut().zip(users).zip(items) {
            if *k && (uc[u as usize] < uk || ic[i as usize] < ik) {
                *k = false;
                changed = true;
            }
        }
        if !changed {
            return (keep, rounds);
        }
    }
}

/// Map old codes to dense new ids starting at `first`, in code order; unused codes map to u32::MAX.
fn compact(codes: &[u32], n: usize, first: u32) -> Vec<u32> {
    let mut used = vec![false; n];
    for &c in codes {
        used[c as usize] = true;
    }
    let mut next = first;
    used.iter()
        .map(|&u| {
            if u {
                next += 1;
                next - 1
            } else {
                u32::MAX
            }
        })
        .collect()
}

fn id_map_frame(
    name: &str,
    map: &[u32],
    names: &[Box<str>],
    new_ids: &[u32],
    first: u32,
) -> Result<DataFrame> {
    let mut ids = Vec::new();
    let mut raw = Vec::new();
    for (code, &id) in map.iter().enumerate() {
        if id != u32::MAX {
            ids.push(id);
            raw.push(names[code].to_string());
        }
    }
    let mut count = vec![0u32; ids.len()];
    for &i in new_ids {
        count[(i - first) as usize] += 1;
    }
    DataFrame::new_infer_height(vec![
        Column::new(name.into(), ids),
        Column::new(col::RAW_ID.into(), raw),
        Column::new(col::COUNT.into(), count),
    ])
    .map_err(pl)
}

fn write_parquet(df: &mut DataFrame, path: &PathBuf) -> Result<()> {
    let f = std::fs::File::create(path).at(path)?;
    ParquetWriter::new(f)
        .with_compression(ParquetCompression::Snappy)
        .with_row_group_size(Some(1 << 20))
        .finish(df)
        .map_err(|e| Error::internal(format!("{}: writing Parquet: {e}", path.display())))?;
    gnno_core::fsutil::sync_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kcore_iterates_until_stable() {
        // user 0 has 2 items, user 1 has 3; item 2 appears only for user 0.
        let users = [0, 0, 1, 1, 1];
        let items = [0, 2, 0, 1, 3];
        let (keep, rounds) = kcore(&users, &items, 2, 4, 2, 1);
        assert_eq!(keep, vec![true, true, true, true, true]);
        assert_eq!(rounds, 1);
        let (keep, rounds) = kcore(&users, &items, 2, 4, 3, 2);
        // Round 1 drops user 0 and the items seen once (1, 2, 3); round 2 then drops user 1.
        assert_eq!(keep, vec![false; 5]);
        assert_eq!(rounds, 3);
    }

    #[test]
    fn compaction_keeps_order() {
        assert_eq!(compact(&[3, 1, 3], 4, 1), vec![u32::MAX, 1, u32::MAX, 2]);
    }
}

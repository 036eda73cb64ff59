//! The ingest stage: raw interaction logs to the canonical, cleaned, time-ordered,
//! re-indexed and split Parquet tables (docs/FORMATS.md, "ingest").
//!
//! Parsing is a streaming pass of our own (it must name file and line of a bad row);
//! so are de-duplication and ordering; polars writes the Parquet output. This crate must
//! not know about any later stage.

pub mod parse;

use gnno_core::config::{IngestSettings, ShortUsers, SplitMode};
use gnno_core::dataset::{col, INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE};
use gnno_core::error::{Error, Result};
use gnno_core::progress::Progress;
use gnno_core::Split;
use polars::prelude::*;
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;

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
    /// Seconds per step: read, dedup, sort, filter, write.
    pub step_seconds: std::collections::BTreeMap<String, f64>,
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
    let mut clock = std::time::Instant::now();
    let mut steps = std::collections::BTreeMap::new();
    let mut lap = |name: &str| {
        steps.insert(name.to_owned(), clock.elapsed().as_secs_f64());
        clock = std::time::Instant::now();
    };
    let raw = parse::read_all(cfg, &files, progress)?;
    lap("read");
    let mut report = IngestReport {
        files: files.iter().map(|f| f.display().to_string()).collect(),
        rows_read: raw.rows_read,
        bad_rows: raw.bad_rows,
        bad_row_examples: raw.bad_examples.clone(),
        dropped_missing: raw.missing,
        dropped_rating: raw.below_rating,
        ..IngestReport::default()
    };
    let n_users = raw.users.names.len();
    let n_items = raw.items.names.len();
    u32::try_from(raw.user.len())
        .map_err(|_| Error::input(report.files.join(", "), "more than 2^32 - 1 interactions"))?;
    // Per user by time; ties keep raw-log order. Each column is gathered into the
    // new order and its raw copy freed before the next, to keep the peak low.
    let order = sort_rows(&raw.user, &raw.ts, n_users);
    fn gather<T: Copy + Send + Sync>(order: &[u32], v: Vec<T>) -> Vec<T> {
        order.par_iter().map(|&r| v[r as usize]).collect()
    }
    let (user_names, item_names) = (raw.users.into_names(), raw.items.into_names());
    let mut users = gather(&order, raw.user);
    let mut items = gather(&order, raw.item);
    let mut ts = gather(&order, raw.ts);
    let ratings = gather(&order, raw.rating);
    drop(order);
    lap("sort");

    let keep = {
        let mut keep = vec![true; users.len()];
        // Exact duplicates share (user, time), so they sit in one run of the sorted table.
        report.dropped_duplicates = mark_duplicates(&mut keep, &users, &ts, |a, b| {
            items[a] == items[b] && ratings[a].to_bits() == ratings[b].to_bits()
        });
        if cfg.dedup_pairs {
            report.dropped_repeat_pairs = mark_repeat_pairs(&mut keep, &users, &items);
        }
        lap("dedup");
        let before = keep.iter().filter(|k| **k).count();
        let rounds = kcore_masked(
            &mut keep,
            &users,
            &items,
            n_users,
            n_items,
            cfg.user_core,
            cfg.item_core,
        );
        report.kcore_rounds = rounds;
        report.dropped_kcore = (before - keep.iter().filter(|k| **k).count()) as u64;
        if cfg.split == SplitMode::LeaveOneOut && cfg.short_users == ShortUsers::Drop {
            let mut ucount = vec![0u32; n_users];
            for (k, &u) in keep.iter().zip(&users) {
                ucount[u as usize] += u32::from(*k);
            }
            for (k, &u) in keep.iter_mut().zip(&users) {
                if *k && ucount[u as usize] < 3 {
                    *k = false;
                    report.dropped_short_users += 1;
                }
            }
        }
        keep
    };
    retain(&mut users, &keep);
    retain(&mut items, &keep);
    retain(&mut ts, &keep);
    drop(ratings);
    drop(keep);
    if users.is_empty() {
        return Err(Error::input(
            report.files.join(", "),
            "no interaction is left after cleaning",
        )
        .with_hint("lower ingest.user-core / ingest.item-core, or check the column mapping"));
    }

    // Dense re-indexing that keeps first-appearance order: the interner numbered ids
    // by first appearance, so ranking the surviving codes preserves it.
    let umap = compact(&users, n_users, 0);
    let imap = compact(&items, n_items, 1);
    let new_u: Vec<u32> = users.par_iter().map(|&u| umap[u as usize]).collect();
    let new_i: Vec<u32> = items.par_iter().map(|&i| imap[i as usize]).collect();
    drop((users, items));

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

    lap("filter_split");
    let mut inter = DataFrame::new_infer_height(vec![
        Column::new(col::USER.into(), new_u.clone()),
        Column::new(col::ITEM.into(), new_i.clone()),
        Column::new(col::TIMESTAMP.into(), ts),
        Column::new(col::POSITION.into(), position),
        Column::new(col::SPLIT.into(), split),
    ])
    .map_err(pl)?;
    write_parquet(&mut inter, &out.join(INTERACTIONS_FILE))?;

    let mut items_df = id_map_frame(col::ITEM, &imap, &item_names, &new_i, 1)?;
    write_parquet(&mut items_df, &out.join(ITEMS_FILE))?;
    let mut users_df = id_map_frame(col::USER, &umap, &user_names, &new_u, 0)?;
    write_parquet(&mut users_df, &out.join(USERS_FILE))?;
    report.users = users_df.height() as u64;
    report.items = items_df.height() as u64;
    lap("write");
    report.step_seconds = steps;
    Ok(report)
}

/// Row indices ordered by (user, time, row): a stable counting sort by user, then
/// each user's rows sorted by time in parallel (a stable sort keeps raw-log order
/// on ties). O(n) plus small per-user sorts, where a general multi-column sort
/// of the whole table took most of the stage's time.
fn sort_rows(users: &[u32], ts: &[i64], n_users: usize) -> Vec<u32> {
    let mut start = vec![0usize; n_users + 1];
    for &u in users {
        start[u as usize + 1] += 1;
    }
    for u in 0..n_users {
        start[u + 1] += start[u];
    }
    let mut order = vec![0u32; users.len()];
    let mut cursor = start.clone();
    for (r, &u) in users.iter().enumerate() {
        // `run` checked that the row count fits in u32.
        order[cursor[u as usize]] = u32::try_from(r).unwrap_or(u32::MAX);
        cursor[u as usize] += 1;
    }
    let mut chunks: Vec<&mut [u32]> = Vec::with_capacity(n_users);
    let mut rest: &mut [u32] = &mut order;
    for u in 0..n_users {
        let (head, tail) = rest.split_at_mut(start[u + 1] - start[u]);
        chunks.push(head);
        rest = tail;
    }
    chunks.into_par_iter().for_each(|c| {
        if !c.windows(2).all(|w| ts[w[0] as usize] <= ts[w[1] as usize]) {
            // Sort (time, row) pairs held together: the comparisons then read
            // contiguous memory instead of `ts` at random, and ordering by row on
            // equal times is the stable order without a stable sort.
            let mut keyed: Vec<(i64, u32)> = c.iter().map(|&r| (ts[r as usize], r)).collect();
            keyed.sort_unstable();
            for (dst, (_, r)) in c.iter_mut().zip(keyed) {
                *dst = r;
            }
        }
    });
    order
}

/// Keep the elements whose `keep` flag is set, in order.
fn retain<T: Copy>(v: &mut Vec<T>, keep: &[bool]) {
    let mut k = keep.iter();
    v.retain(|_| k.next().copied().unwrap_or(false));
}

/// Runs of equal (user, time) in a table sorted by (user, time, row).
fn runs<'a>(users: &'a [u32], ts: &'a [i64]) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= users.len() {
            return None;
        }
        let mut end = start + 1;
        while end < users.len() && users[end] == users[start] && ts[end] == ts[start] {
            end += 1;
        }
        let r = start..end;
        start = end;
        Some(r)
    })
}

/// Drop every row equal (by `same`) to an earlier kept row of its (user, time) run;
/// returns how many were dropped.
fn mark_duplicates(
    keep: &mut [bool],
    users: &[u32],
    ts: &[i64],
    same: impl Fn(usize, usize) -> bool,
) -> u64 {
    let mut dropped = 0;
    for r in runs(users, ts) {
        for b in r.clone().skip(1) {
            if (r.start..b).any(|a| keep[a] && same(a, b)) {
                keep[b] = false;
                dropped += 1;
            }
        }
    }
    dropped
}

/// Keep only the first (in time) of repeated (user, item) pairs among kept rows.
fn mark_repeat_pairs(keep: &mut [bool], users: &[u32], items: &[u32]) -> u64 {
    let mut dropped = 0;
    let mut seen = std::collections::HashSet::new();
    let mut cur = u32::MAX;
    for r in 0..users.len() {
        if users[r] != cur {
            cur = users[r];
            seen.clear();
        }
        if keep[r] && !seen.insert(items[r]) {
            keep[r] = false;
            dropped += 1;
        }
    }
    dropped
}

/// Iterated k-core: drop users with fewer than `uk` and items with fewer than `ik`
/// kept interactions until nothing changes. Returns the rounds taken.
fn kcore_masked(
    keep: &mut [bool],
    users: &[u32],
    items: &[u32],
    n_users: usize,
    n_items: usize,
    uk: u32,
    ik: u32,
) -> u32 {
    if uk == 0 && ik == 0 {
        return 0;
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
            return rounds;
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

/// Written under a temporary name and published by rename, like every other stage's
/// files: a crash never leaves a truncated table under the final name.
/// An I/O error (a full disk) stays one, naming the temp file.
fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<()> {
    gnno_core::fsutil::write_with(path, |f, tmp| {
        ParquetWriter::new(f)
            .with_compression(ParquetCompression::Snappy)
            .with_row_group_size(Some(1 << 20))
            .finish(df)
            .map_err(|e| match e {
                PolarsError::IO { error, .. } => {
                    Error::io(tmp, std::io::Error::new(error.kind(), error.to_string()))
                }
                other => Error::internal(format!("{}: writing Parquet: {other}", path.display())),
            })?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kcore_iterates_until_stable() {
        // user 0 has 2 items, user 1 has 3; item 2 appears only for user 0.
        let users = [0, 0, 1, 1, 1];
        let items = [0, 2, 0, 1, 3];
        let mut keep = vec![true; 5];
        let rounds = kcore_masked(&mut keep, &users, &items, 2, 4, 2, 1);
        assert_eq!(keep, vec![true, true, true, true, true]);
        assert_eq!(rounds, 1);
        let mut keep = vec![true; 5];
        let rounds = kcore_masked(&mut keep, &users, &items, 2, 4, 3, 2);
        // Round 1 drops user 0 and the items seen once (1, 2, 3); round 2 then drops user 1.
        assert_eq!(keep, vec![false; 5]);
        assert_eq!(rounds, 3);
    }

    #[test]
    fn compaction_keeps_order() {
        assert_eq!(compact(&[3, 1, 3], 4, 1), vec![u32::MAX, 1, u32::MAX, 2]);
    }
}

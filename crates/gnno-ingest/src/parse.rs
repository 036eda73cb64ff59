//! Streaming readers for the raw log formats. Each row is reduced to interned user
//! and item codes, a timestamp and an optional rating as it is read, so memory
//! grows with the final table, not with the raw text.

use gnno_core::config::{BadRowPolicy, IngestSettings, InputFormat, TimeFormat};
use gnno_core::error::{Error, IoContext, Result};
use rayon::prelude::*;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// A small, fast non-cryptographic hasher for interning ids (FxHash).
#[derive(Default)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(b))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn finish(&self) -> u64 {
        // Fx alone leaves the low bits (the bucket index) depending only on the low
        // input bytes, which are equal for ids like "u123" / "u456": finish with a
        // murmur3-style mix so every input byte reaches every output bit.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

/// Maps raw id strings to dense codes in order of first appearance.
#[derive(Default)]
pub struct Interner {
    map: HashMap<Box<str>, u32, BuildHasherDefault<FxHasher>>,
    pub names: Vec<Box<str>>,
    /// The last code returned: logs are often grouped by user, so the same id
    /// repeats on consecutive rows.
    last: Option<u32>,
    /// A lower id limit than [`MAX_IDS`] (tests reach it this way).
    pub max_ids: Option<usize>,
}

/// Codes are u32 and `u32::MAX` marks "unused" downstream, so at most this many
/// distinct ids fit; one more is an error, never a silent merge.
pub const MAX_IDS: usize = u32::MAX as usize;

impl Interner {
    /// The code of `s`; `None` once [`MAX_IDS`] distinct ids are taken.
    pub fn code(&mut self, s: &str) -> Option<u32> {
        if let Some(c) = self.last {
            if &*self.names[c as usize] == s {
                return Some(c);
            }
        }
        let c = self.lookup(s)?;
        self.last = Some(c);
        Some(c)
    }

    fn lookup(&mut self, s: &str) -> Option<u32> {
        if let Some(&c) = self.map.get(s) {
            return Some(c);
        }
        if self.names.len() >= self.limit() {
            return None;
        }
        let c = u32::try_from(self.names.len()).ok()?;
        let b: Box<str> = s.into();
        self.names.push(b.clone());
        self.map.insert(b, c);
        Some(c)
    }

    /// The names by code, freeing the lookup table.
    pub fn into_names(self) -> Vec<Box<str>> {
        self.names
    }

    fn limit(&self) -> usize {
        self.max_ids.unwrap_or(MAX_IDS)
    }
}

/// Parsed rows, in raw-log order.
#[derive(Default)]
pub struct RawTable {
    pub user: Vec<u32>,
    pub item: Vec<u32>,
    pub ts: Vec<i64>,
    /// NaN when the log has no rating column.
    pub rating: Vec<f32>,
    pub users: Interner,
    pub items: Interner,
    pub rows_read: u64,
    pub missing: u64,
    /// Rows rated below `min_rating` (dropped while reading).
    pub below_rating: u64,
    pub min_rating: Option<f32>,
    pub bad_rows: u64,
    pub bad_examples: Vec<String>,
}

impl RawTable {
    /// The stand-in for time when the log has no time column: the number of the
    /// current data row over every file, in file then line order (one order for
    /// all files, so a user's rows from two files never interleave).
    fn next_order(&self) -> i64 {
        i64::try_from(self.rows_read).unwrap_or(i64::MAX)
    }

    fn push(&mut self, user: &str, item: &str, ts: i64, rating: f32) -> Result<(), &'static str> {
        if self.min_rating.is_some_and(|m| rating < m) {
            self.below_rating += 1;
            return Ok(());
        }
        let u = self
            .users
            .code(user)
            .ok_or("more than 4294967295 distinct user ids")?;
        let i = self
            .items
            .code(item)
            .ok_or("more than 4294967295 distinct item ids")?;
        self.user.push(u);
        self.item.push(i);
        self.ts.push(ts);
        self.rating.push(rating);
        Ok(())
    }
}

/// Resolve file names and glob patterns (relative to `base`) to a sorted file list.
pub fn resolve_inputs(patterns: &[String], base: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in patterns {
        let full = if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            base.join(p)
        };
        let s = full.to_string_lossy().to_string();
        if s.contains(['*', '?', '[']) {
            let mut hits: Vec<PathBuf> = glob::glob(&s)
                .map_err(|e| {
                    Error::input(
                        format!("ingest.inputs: {p}"),
                        format!("bad glob pattern: {e}"),
                    )
                })?
                .filter_map(std::result::Result::ok)
                .filter(|p| p.is_file())
                .collect();
            if hits.is_empty() {
                return Err(Error::input(
                    format!("ingest.inputs: {p}"),
                    "the pattern matches no file",
                )
                .with_hint("check the path; patterns are relative to the config file's folder"));
            }
            hits.sort();
            files.extend(hits);
        } else {
            if !full.is_file() {
                return Err(
                    Error::input(full.display().to_string(), "input file not found").with_hint(
                        "check ingest.inputs; paths are relative to the config file's folder",
                    ),
                );
            }
            files.push(full);
        }
    }
    Ok(files)
}

fn open(path: &Path) -> Result<Box<dyn BufRead + Send>> {
    let f = std::fs::File::open(path).at(path)?;
    let r: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(f))
    } else {
        Box::new(f)
    };
    Ok(Box::new(BufReader::with_capacity(1 << 20, r)))
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse `YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][Z|(+|-)HH[:]MM]` to unix seconds.
pub fn parse_iso(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.iter().all(u8::is_ascii_digit) && !part.is_empty() {
            std::str::from_utf8(part).ok()?.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let mut secs = days_from_civil(y, mo, d) * 86_400;
    let mut i = 10;
    if i < b.len() && (b[i] == b'T' || b[i] == b' ') {
        let (h, mi) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
        if b.get(i + 3) != Some(&b':') || h > 23 || mi > 59 {
            return None;
        }
        secs += h * 3600 + mi * 60;
        i += 6;
        if b.get(i) == Some(&b':') {
            let sec = num(i + 1..i + 3)?;
            if sec > 60 {
                return None;
            }
            secs += sec;
            i += 3;
            if b.get(i) == Some(&b'.') {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
        }
    }
    if i < b.len() {
        match b[i] {
            b'Z' if i + 1 == b.len() => {}
            sign @ (b'+' | b'-') => {
                let h = num(i + 1..i + 3)?;
                let rest = if b.get(i + 3) == Some(&b':') {
                    i + 4
                } else {
                    i + 3
                };
                let m = num(rest..rest + 2)?;
                if rest + 2 != b.len() {
                    return None;
                }
                let off = h * 3600 + m * 60;
                secs -= if sign == b'+' { off } else { -off };
            }
            _ => return None,
        }
    }
    Some(secs)
}

/// Parse a timestamp field under the configured format.
pub fn parse_time(s: &str, fmt: TimeFormat) -> Option<i64> {
    let unix = |s: &str| -> Option<i64> {
        if let Ok(v) = s.parse::<i64>() {
            return (v.unsigned_abs() < 1 << 62).then_some(v);
        }
        let f: f64 = s.parse().ok()?;
        // Beyond ±2^62 s (far past any calendar) is a broken value, not a time:
        // the cast would silently saturate it.
        #[expect(clippy::cast_possible_truncation, reason = "range checked above")]
        (f.is_finite() && f.abs() < 4.6e18).then(|| f.floor() as i64)
    };
    match fmt {
        TimeFormat::Unix => unix(s),
        TimeFormat::Iso => parse_iso(s),
        TimeFormat::Auto => unix(s).or_else(|| parse_iso(s)),
    }
}

struct Ctx<'a> {
    cfg: &'a IngestSettings,
    path: &'a Path,
}

impl Ctx<'_> {
    fn loc(&self, line: u64) -> String {
        format!("{}:{line}", self.path.display())
    }

    /// Record a bad row; under `error` policy, fail with file and line.
    fn bad(&self, t: &mut RawTable, line: u64, msg: &str) -> Result<()> {
        let loc = self.loc(line);
        if self.cfg.on_bad_row == BadRowPolicy::Error {
            return Err(Error::input(loc, msg.to_owned()).with_hint(
                "fix the row, or set ingest.on-bad-row = \"skip\" to count and skip such rows",
            ));
        }
        t.bad_rows += 1;
        if t.bad_examples.len() < 5 {
            t.bad_examples.push(format!("{loc}: {msg}"));
        }
        Ok(())
    }

    /// Add a row; running out of ids is an input error at this line.
    fn push(&self, t: &mut RawTable, line: u64, row: (&str, &str, i64, f32)) -> Result<()> {
        t.push(row.0, row.1, row.2, row.3)
            .map_err(|m| Error::input(self.loc(line), m))
    }
}

/// Read every input file into one table, in file then line order.
pub fn read_all(
    cfg: &IngestSettings,
    files: &[PathBuf],
    progress: &dyn gnno_core::progress::Progress,
) -> Result<RawTable> {
    #[expect(clippy::cast_possible_truncation, reason = "ratings are small")]
    let mut t = RawTable {
        min_rating: cfg.min_rating.map(|m| m as f32),
        ..RawTable::default()
    };
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    progress.start("ingest: reading", total);
    for path in files {
        let ctx = Ctx { cfg, path };
        let size = std::fs::metadata(path).at(path)?.len();
        match cfg.format {
            InputFormat::Delimited => read_delimited(&ctx, &mut t)?,
            InputFormat::Jsonl => read_jsonl(&ctx, &mut t)?,
            InputFormat::Sequences => read_sequences(&ctx, &mut t)?,
        }
        progress.advance(size);
    }
    progress.finish();
    if t.rows_read == 0 {
        return Err(Error::input(
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            "the input holds no data rows",
        ));
    }
    Ok(t)
}

const BOM: &str = "\u{feff}";

/// Lines of a file with their 1-based numbers, without line endings or a leading
/// UTF-8 byte order mark. A line that is not UTF-8 is passed as `Err(())`.
fn for_each_line(
    path: &Path,
    mut f: impl FnMut(u64, std::result::Result<&str, ()>) -> Result<()>,
) -> Result<()> {
    let mut r = open(path)?;
    let mut buf = Vec::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let got = r
            .read_until(b'\n', &mut buf)
            .map_err(|e| unreadable(path, n + 1, &e))?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        match std::str::from_utf8(&buf) {
            Ok(line) => {
                let line = line.trim_end_matches(['\n', '\r']);
                let line = if n == 1 {
                    line.strip_prefix(BOM).unwrap_or(line)
                } else {
                    line
                };
                f(n, Ok(line))?;
            }
            Err(_) => f(n, Err(()))?,
        }
    }
}

/// A read failure (truncated gzip, I/O error) at a line: the file is bad input.
fn unreadable(path: &Path, line: u64, e: &dyn std::fmt::Display) -> Error {
    Error::input(
        format!("{}:{line}", path.display()),
        format!("unreadable input: {e}"),
    )
    .with_hint("check that the file is complete (a truncated .gz fails here)")
}

const NOT_UTF8: &str = "the line is not valid UTF-8";

/// Index of a configured column in a header; RecBole's typed headers
/// (`user_id:token`) match on the part before the colon. A name that matches
/// twice is ambiguous and refused.
fn find_col(names: &[String], want: &str, key: &str, path: &Path) -> Result<usize> {
    let matches = |n: &String| n == want || n.split(':').next() == Some(want);
    let mut hits = names.iter().enumerate().filter(|(_, n)| matches(n));
    let first = hits.next().map(|(k, _)| k).ok_or_else(|| {
        Error::input(
            path.display().to_string(),
            format!(
                "unknown column {want:?} (ingest.{key}); the columns are: {}",
                names.join(", ")
            ),
        )
        .with_hint(format!("set ingest.{key} to one of the columns above"))
    })?;
    if let Some((second, _)) = hits.next() {
        return Err(Error::input(
            path.display().to_string(),
            format!(
                "column {want:?} (ingest.{key}) appears twice in the header, as columns {} and {}",
                first + 1,
                second + 1
            ),
        ));
    }
    Ok(first)
}

/// The positions of the user, item, time and rating columns, and how many fields a
/// row needs.
#[derive(Clone, Copy)]
struct Cols {
    idx: [Option<usize>; 4],
    need: usize,
}

impl Cols {
    fn resolve(ctx: &Ctx, names: &[String]) -> Result<Self> {
        let cfg = ctx.cfg;
        let opt = |c: &str, key: &str| -> Result<Option<usize>> {
            if c.is_empty() {
                Ok(None)
            } else {
                find_col(names, c, key, ctx.path).map(Some)
            }
        };
        let idx = [
            Some(find_col(names, &cfg.user_col, "user-col", ctx.path)?),
            Some(find_col(names, &cfg.item_col, "item-col", ctx.path)?),
            opt(&cfg.time_col, "time-col")?,
            opt(&cfg.rating_col, "rating-col")?,
        ];
        let need = idx.iter().flatten().max().copied().unwrap_or(0) + 1;
        Ok(Self { idx, need })
    }
}

/// What one data row turned into.
enum Parsed<'a> {
    Row(&'a str, &'a str, i64, f32),
    Missing,
    Bad(String),
}

/// Convert one delimited row's needed fields (`got`, in user, item, time, rating
/// order, out of `found` fields); `order` stands in for time without a time column.
fn parse_fields<'a>(
    cfg: &IngestSettings,
    c: Cols,
    got: [&'a str; 4],
    found: usize,
    order: i64,
) -> Parsed<'a> {
    if found < c.need {
        return Parsed::Bad(format!(
            "expected at least {} fields separated by {:?}, found {found}",
            c.need, cfg.separator
        ));
    }
    let (user, item) = (got[0], got[1]);
    let time = c.idx[2].map(|_| got[2]);
    if is_missing(user) || is_missing(item) || time.is_some_and(is_missing) {
        return Parsed::Missing;
    }
    let ts = match time {
        None => order,
        Some(s) => match parse_time(s, cfg.time_format) {
            Some(v) => v,
            None => {
                return Parsed::Bad(format!(
                    "unparseable timestamp {s:?} in column {:?}",
                    cfg.time_col
                ))
            }
        },
    };
    let rating = match c.idx[3].map(|_| got[3]) {
        None => f32::NAN,
        Some("") => return Parsed::Missing,
        Some(s) => match s.parse::<f32>() {
            Ok(v) if v.is_finite() => v,
            _ => {
                return Parsed::Bad(format!(
                    "unparseable rating {s:?} in column {:?}",
                    cfg.rating_col
                ))
            }
        },
    };
    Parsed::Row(user, item, ts, rating)
}

/// One delimited data row, read sequentially.
fn delimited_row(
    ctx: &Ctx,
    t: &mut RawTable,
    c: Cols,
    n: u64,
    got: [&str; 4],
    found: usize,
) -> Result<()> {
    t.rows_read += 1;
    match parse_fields(ctx.cfg, c, got, found, t.next_order()) {
        Parsed::Row(u, i, ts, r) => ctx.push(t, n, (u, i, ts, r)),
        Parsed::Missing => {
            t.missing += 1;
            Ok(())
        }
        Parsed::Bad(m) => ctx.bad(t, n, &m),
    }
}

fn read_delimited(ctx: &Ctx, t: &mut RawTable) -> Result<()> {
    let cols = if ctx.cfg.header {
        None
    } else {
        Some(Cols::resolve(ctx, &ctx.cfg.columns)?)
    };
    let cols = match ctx.cfg.separator.as_bytes() {
        &[sep] => read_csv(ctx, t, sep, cols)?,
        _ => read_split(ctx, t, cols)?,
    };
    if cols.is_none() {
        return Err(Error::input(
            ctx.path.display().to_string(),
            "the file is empty (no header line)",
        ));
    }
    Ok(())
}

/// Single-byte separators: RFC 4180 (quoted fields may hold the separator, doubled
/// quotes and line breaks), through the `csv` crate, which reports each record's line.
///
/// One thread splits records (csv-core is a byte DFA, the cheap part) into batches
/// that hold only the needed fields; the rayon pool converts batches in parallel
/// (UTF-8, times, ratings, interning within the batch); batches are then merged in
/// order, so ids are numbered by first appearance and the first bad row is the one
/// reported, exactly as a sequential read would.
fn read_csv(ctx: &Ctx, t: &mut RawTable, sep: u8, mut cols: Option<Cols>) -> Result<Option<Cols>> {
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(sep)
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(open(ctx.path)?);
    let mut rec = csv::ByteRecord::new();
    // The header (when the file has one), on this thread.
    if cols.is_none() {
        loop {
            if !read_record(ctx, &mut rdr, &mut rec)? {
                return Ok(None);
            }
            strip_bom(&mut rec);
            if rec.len() == 1 && rec[0].is_empty() {
                continue;
            }
            let n = rec.position().map_or(1, csv::Position::line);
            let names = rec
                .iter()
                .map(|f| std::str::from_utf8(f).map(str::to_owned))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|_| Error::input(ctx.loc(n), "the header is not valid UTF-8"))?;
            cols = Some(Cols::resolve(ctx, &names)?);
            break;
        }
    }
    let Some(c) = cols else {
        return Ok(None);
    };
    let threads = rayon::current_num_threads().max(1);
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Batch>>(2 * threads);
        let mut base = t.rows_read;
        let reader = scope.spawn(move || {
            // With a header the BOM was handled above.
            let mut bom_done = ctx.cfg.header;
            loop {
                let mut b = Batch::new(base);
                let res = (|| -> Result<bool> {
                    while b.len() < BATCH_ROWS {
                        if !read_record(ctx, &mut rdr, &mut rec)? {
                            return Ok(false);
                        }
                        if !bom_done {
                            // Without a header, the first record may carry the BOM.
                            strip_bom(&mut rec);
                            bom_done = true;
                        }
                        if rec.len() == 1 && rec[0].is_empty() {
                            continue;
                        }
                        b.push(&rec, c);
                    }
                    Ok(true)
                })();
                base += b.len() as u64;
                let more = matches!(res, Ok(true));
                let sent = match res {
                    Ok(_) => tx.send(Ok(b)),
                    Err(e) => tx.send(Ok(b)).and_then(|()| tx.send(Err(e))),
                };
                if sent.is_err() || !more {
                    return;
                }
            }
        });
        let min_rating = t.min_rating;
        let mut result = Ok(());
        let mut pending: Vec<Batch> = Vec::with_capacity(threads);
        let mut late_error = None;
        loop {
            let msg = rx.recv().ok();
            let done = match msg {
                Some(Ok(b)) => {
                    pending.push(b);
                    false
                }
                Some(Err(e)) => {
                    late_error = Some(e);
                    true
                }
                None => true,
            };
            if pending.len() >= threads || (done && !pending.is_empty()) {
                let converted: Vec<Converted> = pending
                    .par_iter()
                    .map(|b| b.convert(ctx.cfg, c, min_rating))
                    .collect();
                for (b, conv) in pending.drain(..).zip(converted) {
                    if let Err(e) = merge(ctx, t, &b, conv) {
                        result = Err(e);
                        break;
                    }
                }
            }
            if done || result.is_err() {
                break;
            }
        }
        drop(rx);
        let _ = reader.join();
        result?;
        match late_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })?;
    Ok(cols)
}

/// Records per batch: large enough to amortise the merge, small enough to stream.
const BATCH_ROWS: usize = 1 << 16;

/// The next record; `false` at the end. A read failure names the line.
fn read_record(
    ctx: &Ctx,
    rdr: &mut csv::Reader<Box<dyn BufRead + Send>>,
    rec: &mut csv::ByteRecord,
) -> Result<bool> {
    let line = rdr.position().line();
    rdr.read_byte_record(rec).map_err(|e| {
        let at = e.position().map_or(line, csv::Position::line);
        unreadable(ctx.path, at, &e)
    })
}

/// Drop a UTF-8 byte order mark from the first field.
fn strip_bom(rec: &mut csv::ByteRecord) {
    if let Some(rest) = rec.get(0).and_then(|f| f.strip_prefix(BOM.as_bytes())) {
        let mut r = csv::ByteRecord::new();
        r.push_field(rest);
        for x in rec.iter().skip(1) {
            r.push_field(x);
        }
        r.set_position(rec.position().cloned());
        *rec = r;
    }
}

/// Needed fields of up to [`BATCH_ROWS`] records, as bytes.
struct Batch {
    /// Data rows read before this batch, over every file.
    base: u64,
    data: Vec<u8>,
    /// Per record, the (start, end) in `data` of the user, item, time and rating fields.
    spans: Vec<[(u32, u32); 4]>,
    found: Vec<u32>,
    lines: Vec<u64>,
}

/// A converted batch: rows with batch-local id codes and the local names.
struct Converted {
    users: Vec<u32>,
    items: Vec<u32>,
    ts: Vec<i64>,
    rating: Vec<f32>,
    user_names: Vec<Box<str>>,
    item_names: Vec<Box<str>>,
    missing: u64,
    below_rating: u64,
    /// Bad rows in order: (line, problem). Under `error`, conversion stops at the first.
    bad: Vec<(u64, String)>,
}

impl Batch {
    fn new(base: u64) -> Self {
        Self {
            base,
            data: Vec::new(),
            spans: Vec::with_capacity(BATCH_ROWS),
            found: Vec::with_capacity(BATCH_ROWS),
            lines: Vec::with_capacity(BATCH_ROWS),
        }
    }

    fn len(&self) -> usize {
        self.spans.len()
    }

    fn push(&mut self, rec: &csv::ByteRecord, c: Cols) {
        let mut spans = [(0u32, 0u32); 4];
        for (slot, ci) in c.idx.iter().enumerate() {
            if let Some(f) = ci.and_then(|k| rec.get(k)) {
                let start = self.data.len();
                self.data.extend_from_slice(f);
                // A batch holds at most 2^16 records of needed fields: far below 4 GiB
                // unless fields are gigantic, and then the cast saturates harmlessly
                // into an empty span that fails as a bad row.
                spans[slot] = (
                    u32::try_from(start).unwrap_or(u32::MAX),
                    u32::try_from(self.data.len()).unwrap_or(u32::MAX),
                );
            }
        }
        self.spans.push(spans);
        self.found
            .push(u32::try_from(rec.len()).unwrap_or(u32::MAX));
        self.lines
            .push(rec.position().map_or(0, csv::Position::line));
    }

    fn field(&self, (a, b): (u32, u32)) -> Option<&[u8]> {
        self.data.get(a as usize..b as usize)
    }

    fn convert(&self, cfg: &IngestSettings, c: Cols, min_rating: Option<f32>) -> Converted {
        let mut out = Converted {
            users: Vec::with_capacity(self.len()),
            items: Vec::with_capacity(self.len()),
            ts: Vec::with_capacity(self.len()),
            rating: Vec::with_capacity(self.len()),
            user_names: Vec::new(),
            item_names: Vec::new(),
            missing: 0,
            below_rating: 0,
            bad: Vec::new(),
        };
        let mut users: HashMap<&str, u32, BuildHasherDefault<FxHasher>> = HashMap::default();
        let mut items: HashMap<&str, u32, BuildHasherDefault<FxHasher>> = HashMap::default();
        for k in 0..self.len() {
            let line = self.lines[k];
            let mut got = [""; 4];
            let mut utf8 = true;
            for ((g, ci), &span) in got.iter_mut().zip(&c.idx).zip(&self.spans[k]) {
                if ci.is_some() {
                    match self.field(span).map(std::str::from_utf8) {
                        Some(Ok(s)) => *g = s,
                        _ => utf8 = false,
                    }
                }
            }
            let order = i64::try_from(self.base + k as u64 + 1).unwrap_or(i64::MAX);
            let parsed = if utf8 {
                parse_fields(cfg, c, got, self.found[k] as usize, order)
            } else {
                Parsed::Bad(NOT_UTF8.to_owned())
            };
            match parsed {
                Parsed::Row(u, i, ts, r) => {
                    if min_rating.is_some_and(|m| r < m) {
                        out.below_rating += 1;
                        continue;
                    }
                    let next = u32::try_from(out.user_names.len()).unwrap_or(u32::MAX);
                    let uc = *users.entry(u).or_insert_with(|| {
                        out.user_names.push(u.into());
                        next
                    });
                    let next = u32::try_from(out.item_names.len()).unwrap_or(u32::MAX);
                    let ic = *items.entry(i).or_insert_with(|| {
                        out.item_names.push(i.into());
                        next
                    });
                    out.users.push(uc);
                    out.items.push(ic);
                    out.ts.push(ts);
                    out.rating.push(r);
                }
                Parsed::Missing => out.missing += 1,
                Parsed::Bad(m) => {
                    out.bad.push((line, m));
                    if cfg.on_bad_row == BadRowPolicy::Error {
                        break;
                    }
                }
            }
        }
        out
    }
}

/// Append a converted batch to the table: local codes become global ones, in
/// first-appearance order; the batch's first bad row fails under `error`.
fn merge(ctx: &Ctx, t: &mut RawTable, b: &Batch, conv: Converted) -> Result<()> {
    if ctx.cfg.on_bad_row == BadRowPolicy::Error {
        if let Some((line, m)) = conv.bad.first() {
            return ctx.bad(t, *line, m);
        }
    }
    t.rows_read += b.len() as u64;
    t.missing += conv.missing;
    t.below_rating += conv.below_rating;
    for (line, m) in &conv.bad {
        ctx.bad(t, *line, m)?;
    }
    let map = |names: &[Box<str>], interner: &mut Interner, what: &str| -> Result<Vec<u32>> {
        names
            .iter()
            .enumerate()
            .map(|(k, n)| {
                interner.code(n).ok_or_else(|| {
                    // The first row that used this local code.
                    Error::input(
                        ctx.path.display().to_string(),
                        format!("more than 4294967295 distinct {what} ids (at local id {k})"),
                    )
                })
            })
            .collect()
    };
    let umap = map(&conv.user_names, &mut t.users, "user")?;
    let imap = map(&conv.item_names, &mut t.items, "item")?;
    t.user.extend(conv.users.iter().map(|&u| umap[u as usize]));
    t.item.extend(conv.items.iter().map(|&i| imap[i as usize]));
    t.ts.extend_from_slice(&conv.ts);
    t.rating.extend_from_slice(&conv.rating);
    Ok(())
}

/// Multi-byte separators (MovieLens' `::`): plain splitting, as such files have no
/// quoting; a field wrapped in quotes is unwrapped.
fn read_split(ctx: &Ctx, t: &mut RawTable, mut cols: Option<Cols>) -> Result<Option<Cols>> {
    let sep = ctx.cfg.separator.as_str();
    for_each_line(ctx.path, |n, line| {
        let Ok(line) = line else {
            t.rows_read += 1;
            return ctx.bad(t, n, NOT_UTF8);
        };
        if line.trim().is_empty() {
            return Ok(());
        }
        let Some(c) = cols else {
            let names: Vec<String> = line.split(sep).map(|s| unquote(s).to_owned()).collect();
            cols = Some(Cols::resolve(ctx, &names)?);
            return Ok(());
        };
        // Pick the needed fields without collecting the line.
        let mut got = [""; 4];
        let mut found = 0;
        for (k, f) in line.split(sep).enumerate() {
            found = k + 1;
            for (slot, ci) in c.idx.iter().enumerate() {
                if *ci == Some(k) {
                    got[slot] = unquote(f);
                }
            }
            if found >= c.need {
                break;
            }
        }
        delimited_row(ctx, t, c, n, got, found)
    })?;
    Ok(cols)
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

fn json_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn read_jsonl(ctx: &Ctx, t: &mut RawTable) -> Result<()> {
    let cfg = ctx.cfg;
    for_each_line(ctx.path, |n, line| {
        let Ok(line) = line else {
            t.rows_read += 1;
            return ctx.bad(t, n, NOT_UTF8);
        };
        if line.trim().is_empty() {
            return Ok(());
        }
        t.rows_read += 1;
        let obj: serde_json::Map<String, serde_json::Value> = match serde_json::from_str(line) {
            Ok(o) => o,
            Err(e) => return ctx.bad(t, n, &format!("not a JSON object: {e}")),
        };
        let field = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let (Some(user), Some(item)) = (
            field(&cfg.user_col).and_then(json_text),
            field(&cfg.item_col).and_then(json_text),
        ) else {
            t.missing += 1;
            return Ok(());
        };
        let ts = if cfg.time_col.is_empty() {
            t.next_order()
        } else {
            let Some(v) = field(&cfg.time_col) else {
                t.missing += 1;
                return Ok(());
            };
            match json_text(v).and_then(|s| parse_time(&s, cfg.time_format)) {
                Some(ts) => ts,
                None => {
                    return ctx.bad(
                        t,
                        n,
                        &format!("unparseable timestamp {v} in field {:?}", cfg.time_col),
                    )
                }
            }
        };
        let rating = if cfg.rating_col.is_empty() {
            f32::NAN
        } else {
            #[expect(clippy::cast_possible_truncation, reason = "ratings are small")]
            match field(&cfg.rating_col).map(|v| {
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|r| r.is_finite())
            }) {
                None => {
                    t.missing += 1;
                    return Ok(());
                }
                Some(Some(r)) => r as f32,
                Some(None) => {
                    return ctx.bad(
                        t,
                        n,
                        &format!("unparseable rating in field {:?}", cfg.rating_col),
                    )
                }
            }
        };
        ctx.push(t, n, (&user, &item, ts, rating))
    })
}

/// `user item item …` per line; a line's order is time order, and the global row
/// counter orders lines (and files) so a user on two lines keeps file order.
fn read_sequences(ctx: &Ctx, t: &mut RawTable) -> Result<()> {
    for_each_line(ctx.path, |n, line| {
        let Ok(line) = line else {
            t.rows_read += 1;
            return ctx.bad(t, n, NOT_UTF8);
        };
        let mut parts = line.split_whitespace();
        let Some(user) = parts.next() else {
            return Ok(());
        };
        let user = user.to_owned();
        let mut any = false;
        for item in parts {
            any = true;
            t.rows_read += 1;
            let ts = t.next_order();
            ctx.push(t, n, (&user, item, ts, f32::NAN))?;
        }
        if !any {
            t.rows_read += 1;
            return ctx.bad(t, n, "a user with no items");
        }
        Ok(())
    })
}

/// Empty fields and the usual null spellings count as missing values.
fn is_missing(s: &str) -> bool {
    matches!(s, "" | "NA" | "NaN" | "null" | "NULL" | "None")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_dates_parse_to_unix_seconds() {
        assert_eq!(parse_iso("1970-01-01"), Some(0));
        assert_eq!(parse_iso("2014-01-31"), Some(1_391_126_400));
        assert_eq!(
            parse_iso("2014-01-31T01:02:03Z"),
            Some(1_391_126_400 + 3723)
        );
        assert_eq!(
            parse_iso("2014-01-31 01:02:03.25+01:00"),
            Some(1_391_126_400 + 3723 - 3600)
        );
        assert_eq!(parse_iso("2014-13-01"), None);
        assert_eq!(parse_iso("yesterday"), None);
        assert_eq!(
            parse_time("881250949.0", TimeFormat::Auto),
            Some(881_250_949)
        );
        assert_eq!(parse_time("2016-05-09", TimeFormat::Unix), None);
        // Issue 11: a 23-digit "timestamp" saturated to i64::MAX and was accepted.
        assert_eq!(
            parse_time("12345678901234567890123", TimeFormat::Auto),
            None
        );
        assert_eq!(parse_time("9223372036854775807", TimeFormat::Unix), None);
    }

    #[test]
    fn ids_beyond_the_code_space_are_refused_not_merged() {
        let mut i = Interner {
            max_ids: Some(2),
            ..Interner::default()
        };
        assert_eq!(i.code("a"), Some(0));
        assert_eq!(i.code("b"), Some(1));
        assert_eq!(i.code("a"), Some(0));
        assert_eq!(
            i.code("c"),
            None,
            "a third id would have merged into u32::MAX"
        );
        assert_eq!(i.into_names().len(), 2);
    }
}

//! Streaming readers for the raw log formats. Each row is reduced to interned user
//! and item codes, a timestamp and an optional rating as it is read, so memory
//! grows with the final table, not with the raw text.

use gnno_core::config::{BadRowPolicy, IngestSettings, InputFormat, TimeFormat};
use gnno_core::error::{Error, IoContext, Result};
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
}

impl Interner {
    pub fn code(&mut self, s: &str) -> u32 {
        if let Some(c) = self.last {
            if &*self.names[c as usize] == s {
                return c;
            }
        }
        let c = self.lookup(s);
        self.last = Some(c);
        c
    }

    fn lookup(&mut self, s: &str) -> u32 {
        if let Some(&c) = self.map.get(s) {
            return c;
        }
        let c = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        let b: Box<str> = s.into();
        self.names.push(b.clone());
        self.map.insert(b, c);
        c
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
    fn push(&mut self, user: &str, item: &str, ts: i64, rating: f32) {
        if self.min_rating.is_some_and(|m| rating < m) {
            self.below_rating += 1;
            return;
        }
        let u = self.users.code(user);
        let i = self.items.code(item);
        self.user.push(u);
        self.item.push(i);
        self.ts.push(ts);
        self.rating.push(rating);
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

fn open(path: &Path) -> Result<Box<dyn BufRead>> {
    let f = std::fs::File::open(path).at(path)?;
    let r: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
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
            return Some(v);
        }
        let f: f64 = s.parse().ok()?;
        #[expect(clippy::cast_possible_truncation, reason = "seconds fit in i64")]
        f.is_finite().then(|| f.floor() as i64)
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
    /// Record a bad row; under `error` policy, fail with file and line.
    fn bad(&self, t: &mut RawTable, line: u64, msg: &str) -> Result<()> {
        let loc = format!("{}:{line}", self.path.display());
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

/// Lines of a file with their 1-based numbers, without line endings.
fn for_each_line(path: &Path, mut f: impl FnMut(u64, &str) -> Result<()>) -> Result<()> {
    let mut r = open(path)?;
    let mut buf = String::new();
    let mut n = 0u64;
    loop {
        buf.clear();
        let got = r.read_line(&mut buf).map_err(|e| {
            Error::input(
                format!("{}:{}", path.display(), n + 1),
                format!("unreadable line: {e}"),
            )
        })?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        let line = buf.trim_end_matches(['\n', '\r']);
        f(n, line)?;
    }
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// Index of a configured column in a header; RecBole's typed headers
/// (`user_id:token`) match on the part before the colon.
fn find_col(names: &[String], want: &str, key: &str, path: &Path) -> Result<usize> {
    names
        .iter()
        .position(|n| n == want || n.split(':').next() == Some(want))
        .ok_or_else(|| {
            Error::input(
                path.display().to_string(),
                format!(
                    "unknown column {want:?} (ingest.{key}); the columns are: {}",
                    names.join(", ")
                ),
            )
            .with_hint(format!("set ingest.{key} to one of the columns above"))
        })
}

fn read_delimited(ctx: &Ctx, t: &mut RawTable) -> Result<()> {
    let cfg = ctx.cfg;
    let sep = cfg.separator.as_str();
    let mut cols: Option<[Option<usize>; 4]> = None;
    let mut need = 0usize;
    let resolve = |names: &[String]| -> Result<[Option<usize>; 4]> {
        let opt = |c: &str, key: &str| -> Result<Option<usize>> {
            if c.is_empty() {
                Ok(None)
            } else {
                find_col(names, c, key, ctx.path).map(Some)
            }
        };
        Ok([
            Some(find_col(names, &cfg.user_col, "user-col", ctx.path)?),
            Some(find_col(names, &cfg.item_col, "item-col", ctx.path)?),
            opt(&cfg.time_col, "time-col")?,
            opt(&cfg.rating_col, "rating-col")?,
        ])
    };
    if !cfg.header {
        let c = resolve(&cfg.columns)?;
        need = c.iter().flatten().max().copied().unwrap_or(0) + 1;
        cols = Some(c);
    }
    let mut seq_pos = 0i64;
    for_each_line(ctx.path, |n, line| {
        if line.trim().is_empty() {
            return Ok(());
        }
        let Some(c) = cols else {
            let names: Vec<String> = line.split(sep).map(|s| unquote(s).to_owned()).collect();
            let c = resolve(&names)?;
            need = c.iter().flatten().max().copied().unwrap_or(0) + 1;
            cols = Some(c);
            return Ok(());
        };
        t.rows_read += 1;
        // Pick the needed fields without collecting the line.
        let mut got = [""; 4];
        let mut found = 0;
        for (k, f) in line.split(sep).enumerate() {
            found = k + 1;
            for (slot, ci) in c.iter().enumerate() {
                if *ci == Some(k) {
                    got[slot] = unquote(f);
                }
            }
            if found >= need {
                break;
            }
        }
        if found < need {
            let msg =
                format!("expected at least {need} fields separated by {sep:?}, found {found}");
            return ctx.bad(t, n, &msg);
        }
        let (user, item) = (got[0], got[1]);
        let time = c[2].map(|_| got[2]);
        if is_missing(user) || is_missing(item) || time.is_some_and(is_missing) {
            t.missing += 1;
            return Ok(());
        }
        let ts = match time {
            None => {
                seq_pos += 1;
                seq_pos
            }
            Some(s) => match parse_time(s, cfg.time_format) {
                Some(v) => v,
                None => {
                    let msg = format!("unparseable timestamp {s:?} in column {:?}", cfg.time_col);
                    return ctx.bad(t, n, &msg);
                }
            },
        };
        let rating = match c[3].map(|_| got[3]) {
            None => f32::NAN,
            Some("") => {
                t.missing += 1;
                return Ok(());
            }
            Some(s) => match s.parse::<f32>() {
                Ok(v) if v.is_finite() => v,
                _ => {
                    let msg = format!("unparseable rating {s:?} in column {:?}", cfg.rating_col);
                    return ctx.bad(t, n, &msg);
                }
            },
        };
        t.push(user, item, ts, rating);
        Ok(())
    })?;
    if cols.is_none() {
        return Err(Error::input(
            ctx.path.display().to_string(),
            "the file is empty (no header line)",
        ));
    }
    Ok(())
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
    let mut seq_pos = 0i64;
    for_each_line(ctx.path, |n, line| {
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
            seq_pos += 1;
            seq_pos
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
        t.push(&user, &item, ts, rating);
        Ok(())
    })
}

fn read_sequences(ctx: &Ctx, t: &mut RawTable) -> Result<()> {
    for_each_line(ctx.path, |n, line| {
        let mut parts = line.split_whitespace();
        let Some(user) = parts.next() else {
            return Ok(());
        };
        let user = user.to_owned();
        let mut pos = 0i64;
        for item in parts {
            t.rows_read += 1;
            t.push(&user, item, pos, f32::NAN);
            pos += 1;
        }
        if pos == 0 {
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
    }
}

//! The run history: one JSON line per stage per invocation, appended to
//! `<workdir>/history.jsonl` (docs/FORMATS.md, "Run history").
//!
//! Appending is one `write` of a whole line on a file opened with `O_APPEND`,
//! followed by `fsync`, so a crash loses at most the line being written. A line
//! cut short by a crash is skipped by the reader (and counted); the next append
//! starts on a fresh line, so the damage never spreads to later records.

use anyhow::Result;
use gnno_core::error::IoContext;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const HISTORY_FILE: &str = "history.jsonl";

/// What became of a stage in one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Ran and published (its gates passed, or it has none).
    Published,
    /// Ran and published although a gate failed (`--override-gates`).
    Overridden,
    /// Up to date: nothing ran; the figures are those of the published run.
    UpToDate,
    /// Ran, but a gate failed: nothing was published.
    GateFailed,
    /// Stopped with an error: nothing was published.
    Failed,
    /// `gnno rollback`: an earlier kept run was published again.
    RolledBack,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Published => "published",
            Self::Overridden => "overridden",
            Self::UpToDate => "up-to-date",
            Self::GateFailed => "gate-failed",
            Self::Failed => "failed",
            Self::RolledBack => "rolled-back",
        }
    }

    /// Did the stage end with an accepted output?
    pub fn accepted(self) -> bool {
        !matches!(self, Self::GateFailed | Self::Failed)
    }
}

/// One gate as it was checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateCheck {
    pub figure: String,
    pub value: f64,
    /// `min`, `max`, `max-drop` or `max-rise`.
    pub rule: String,
    /// The configured limit (a value for min/max, a fraction for the relative ones).
    pub limit: f64,
    /// The bound the value was held to (for relative rules: the baseline scaled).
    pub bound: f64,
    /// The accepted run a relative rule compared with (its run folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_run: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_value: Option<f64>,
    pub passed: bool,
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Identifies the invocation (`gnno run` of one night): its start, UTC, and pid.
    pub invocation: String,
    /// When the record was written, unix seconds and RFC 3339 UTC.
    pub time_unix: u64,
    pub time: String,
    pub stage: String,
    pub outcome: Outcome,
    pub gnno_version: String,
    pub settings_hash: String,
    /// Input name → fingerprint (raw files for ingest, upstream stages otherwise).
    pub inputs: BTreeMap<String, String>,
    /// The run folder (published, or left unpublished by a failed gate).
    pub run_dir: Option<String>,
    pub fingerprint: Option<String>,
    /// The stage's figures (`gnno_core::config::STAGE_FIGURES`).
    pub figures: BTreeMap<String, f64>,
    pub wall_s: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<GateCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn path(workdir: &Path) -> PathBuf {
    workdir.join(HISTORY_FILE)
}

/// Append one record durably.
pub fn append(workdir: &Path, r: &Record) -> Result<()> {
    let p = path(workdir);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(&p)
        .at(&p)?;
    let mut line = serde_json::to_string(r)?;
    line.push('\n');
    // A line cut short by a crash has no newline: end it so this record stays whole.
    let len = f.metadata().at(&p)?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1)).at(&p)?;
        f.read_exact(&mut last).at(&p)?;
        if last[0] != b'\n' {
            line.insert(0, '\n');
        }
    }
    f.write_all(line.as_bytes()).at(&p)?;
    f.sync_all().at(&p)?;
    Ok(())
}

/// Every readable record, oldest first, and the number of damaged lines skipped.
pub fn read(workdir: &Path) -> Result<(Vec<Record>, usize)> {
    let p = path(workdir);
    // Bytes, decoded line by line: a crash that cut a character in two spoils its
    // own line only.
    let bytes = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(gnno_core::Error::io(&p, e).into()),
    };
    let mut out = Vec::new();
    let mut bad = 0;
    for line in bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
    {
        match serde_json::from_slice::<Record>(line) {
            Ok(r) => out.push(r),
            Err(_) => bad += 1,
        }
    }
    Ok((out, bad))
}

/// The id of this process's invocation: its start time (UTC) and pid.
pub fn invocation() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{}/{}", rfc3339(now_unix()), std::process::id()))
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 3339 UTC (`2026-11-28T02:00:00Z`) of unix seconds.
pub fn rfc3339(unix: u64) -> String {
    let days = i64::try_from(unix / 86_400).unwrap_or(0);
    let secs = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(stage: &str, outcome: Outcome) -> Record {
        Record {
            invocation: "i".into(),
            time_unix: 0,
            time: rfc3339(0),
            stage: stage.into(),
            outcome,
            gnno_version: "0".into(),
            settings_hash: "h".into(),
            inputs: BTreeMap::new(),
            run_dir: None,
            fingerprint: None,
            figures: BTreeMap::from([("rows".to_owned(), 3.0)]),
            wall_s: 1.5,
            gates: vec![],
            error: None,
        }
    }

    #[test]
    fn dates_are_utc_civil_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_831_200), "2026-11-28T02:00:00Z");
    }

    #[test]
    fn a_line_cut_by_a_crash_is_skipped_and_does_not_swallow_the_next_record() {
        let dir = tempfile::tempdir().expect("tmp");
        append(dir.path(), &record("ingest", Outcome::Published)).expect("append");
        // A crash in the middle of the second append.
        let p = path(dir.path());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .expect("open");
        // Cut inside a two-byte character.
        f.write_all(b"{\"invocation\":\"x\xc3").expect("write");
        drop(f);
        append(dir.path(), &record("graph", Outcome::GateFailed)).expect("append");
        let (recs, bad) = read(dir.path()).expect("read");
        assert_eq!(bad, 1);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].stage, "ingest");
        assert_eq!(recs[1].stage, "graph");
        assert_eq!(recs[1].outcome, Outcome::GateFailed);
        assert!(!recs[1].outcome.accepted());
        assert_eq!(recs[1].figures["rows"], 3.0);
    }
}

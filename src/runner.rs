//! The stage runner: up-to-date checks, the workdir lock, and publication.
//!
//! Each stage writes into `<workdir>/<stage>/run-<key>/`, where the key hashes the
//! stage's settings and input fingerprints, then publishes `<workdir>/<stage>/manifest.json`
//! by atomic rename. Until that rename, the previous manifest and the run folder it
//! names stay untouched, so a killed stage never damages the last good output. A
//! rerun with the same key reuses the folder, which lets the negatives stage keep
//! the shards a killed run finished.

use crate::pipeline::Pipeline;
use crate::stages::{StageName, StageOutput};
use anyhow::{Context, Result};
use gnno_core::error::IoContext;
use gnno_core::fsutil;
use gnno_core::manifest::{self, InputRef, Manifest};
use gnno_core::progress::Progress;
use serde::Serialize;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Another run holds the workdir.
#[derive(Debug, thiserror::Error)]
#[error("{workdir} is in use by another gnno run (pid {pid})")]
pub struct Busy {
    pub workdir: String,
    pub pid: String,
}

/// An exclusive lock on a workdir, released when dropped or when the process dies.
pub struct Lock {
    _file: File,
}

impl Lock {
    pub fn acquire(workdir: &Path) -> Result<Self> {
        fsutil::create_dir_durable(workdir)?;
        let path = workdir.join(".lock");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .at(&path)?;
        if lock_is_busy(f.try_lock(), &path)? {
            let pid = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_owned();
            return Err(Busy {
                workdir: workdir.display().to_string(),
                pid,
            }
            .into());
        }
        // The OS drops the lock of a dead process, so a stale lock is simply taken over.
        f.set_len(0).at(&path)?;
        write!(f, "{}", std::process::id()).at(&path)?;
        f.sync_all().at(&path)?;
        Ok(Self { _file: f })
    }
}

/// Only "would block" means another holder; any other failure (ENOLCK on NFS, EIO,
/// ...) is an error naming the lock file, never reported as "busy".
fn lock_is_busy(r: Result<(), std::fs::TryLockError>, path: &Path) -> gnno_core::Result<bool> {
    match r {
        Ok(()) => Ok(false),
        Err(std::fs::TryLockError::WouldBlock) => Ok(true),
        Err(std::fs::TryLockError::Error(e)) => Err(gnno_core::Error::io(path, e)),
    }
}

/// Where a stage stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    UpToDate,
    Stale { reasons: Vec<String> },
    Missing,
}

impl Pipeline {
    /// Settings of a stage that its output depends on (declared by the stage).
    pub fn settings(&self, s: StageName) -> serde_json::Value {
        s.stage().settings(&self.cfg)
    }

    /// Current fingerprints of a stage's inputs. `previous` lets unchanged raw files
    /// (same size and mtime) skip rehashing.
    pub fn inputs(&self, s: StageName, previous: Option<&Manifest>) -> Result<Vec<InputRef>> {
        if s == StageName::Ingest {
            let files =
                gnno_ingest::parse::resolve_inputs(&self.cfg.ingest.inputs, &self.config_dir)?;
            let mut out = Vec::new();
            for f in files {
                let md = std::fs::metadata(&f).at(&f)?;
                let mtime_ns = md
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| i128::try_from(d.as_nanos()).unwrap_or(0));
                let name = format!("file:{}", f.display());
                let cached = previous
                    .and_then(|m| m.inputs.iter().find(|i| i.name == name))
                    .filter(|i| i.size == Some(md.len()) && i.mtime_ns == mtime_ns)
                    .map(|i| i.fingerprint.clone());
                let fingerprint = match cached {
                    Some(fp) => fp,
                    None => fsutil::sha256_file(&f)?,
                };
                out.push(InputRef {
                    name,
                    fingerprint,
                    size: Some(md.len()),
                    mtime_ns,
                });
            }
            return Ok(out);
        }
        s.upstream()
            .iter()
            .map(|&u| {
                let m = self.manifest(u)?;
                Ok(InputRef {
                    name: u.as_str().to_owned(),
                    fingerprint: m
                        .map(|m| m.fingerprint)
                        .unwrap_or_else(|| "<missing>".into()),
                    size: None,
                    mtime_ns: None,
                })
            })
            .collect()
    }

    /// Is the stage up to date with its current inputs and settings? A stage whose
    /// upstream is stale or missing is stale too: `gnno run` would redo it.
    pub fn state(&self, s: StageName) -> Result<State> {
        let Some(m) = self.manifest(s)? else {
            return Ok(State::Missing);
        };
        let mut reasons = Vec::new();
        for &u in s.upstream() {
            match self.state(u)? {
                State::UpToDate => {}
                State::Missing => reasons.push(format!("upstream stage {u} is missing")),
                State::Stale { .. } => reasons.push(format!("upstream stage {u} is stale")),
            }
        }
        let settings = self.settings(s);
        if manifest::settings_hash(&settings) != m.settings_hash {
            reasons.extend(diff_settings(&m.settings, &settings, ""));
            if reasons.is_empty() {
                reasons.push("settings changed".into());
            }
        }
        let inputs = self.inputs(s, Some(&m))?;
        for cur in &inputs {
            match m.inputs.iter().find(|i| i.name == cur.name) {
                Some(old) if old.fingerprint == cur.fingerprint => {}
                Some(_) => reasons.push(format!("input {} changed", cur.name)),
                None => reasons.push(format!("new input {}", cur.name)),
            }
        }
        for old in &m.inputs {
            if !inputs.iter().any(|i| i.name == old.name) {
                reasons.push(format!("input {} is gone", old.name));
            }
        }
        if let Err(e) = m.verify_outputs(&self.stage_dir(s), false) {
            reasons.push(format!("output damaged: {e}"));
        }
        Ok(if reasons.is_empty() {
            State::UpToDate
        } else {
            State::Stale { reasons }
        })
    }

    /// Run one stage and publish its manifest.
    pub fn execute(&self, s: StageName, progress: &dyn Progress) -> Result<Manifest> {
        let dir = self.stage_dir(s);
        fsutil::create_dir_durable(&dir)?;
        let previous = self.manifest(s).ok().flatten();
        let settings = self.settings(s);
        let settings_hash = manifest::settings_hash(&settings);
        let inputs = self.inputs(s, previous.as_ref())?;
        if let Some(missing) = inputs.iter().find(|i| i.fingerprint == "<missing>") {
            return Err(gnno_core::Error::usage(format!(
                "stage {s} needs the output of stage {}, which has not run",
                missing.name
            ))
            .with_hint(format!("run `gnno run --to {s}`"))
            .into());
        }
        let extra = s.stage().run_key_extra(self)?;
        let key_src = format!(
            "{settings_hash}{}{extra}|{}",
            if extra.is_empty() { "" } else { "|" },
            inputs
                .iter()
                .map(|i| format!("{}={}", i.name, i.fingerprint))
                .collect::<Vec<_>>()
                .join("|")
        );
        let key = &fsutil::sha256_bytes(key_src.as_bytes())[..16];
        let mut run_dir = format!("run-{key}");
        if previous.as_ref().is_some_and(|p| p.run_dir == run_dir) {
            // A forced rerun of an up-to-date stage: never write into the published folder.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            run_dir = format!("run-{key}-{nanos}");
        }
        let out = dir.join(&run_dir);
        fsutil::create_dir_durable(&out)?;
        // A killed run of the same key may have left temporary files behind.
        let stale = fsutil::remove_temp_files(&out)?;
        if stale > 0 {
            tracing::info!(
                stage = s.as_str(),
                files = stale,
                "removed temporary files of an interrupted run"
            );
        }
        tracing::info!(stage = s.as_str(), dir = %out.display(), "running stage");
        let t0 = Instant::now();
        let StageOutput {
            report,
            fingerprint,
            rows,
            mut timings,
            opaque,
        } = s
            .stage()
            .run(self, &out, progress)
            .with_context(|| format!("stage {s} failed"))?;
        let elapsed = t0.elapsed().as_secs_f64();
        timings.insert("total".into(), elapsed);
        let outputs = manifest::describe_outputs(&dir, &run_dir, &rows, &opaque)?;
        let fingerprint = fingerprint.unwrap_or_else(|| {
            let joined: Vec<String> = outputs
                .iter()
                .map(|o| {
                    format!(
                        "{}:{}",
                        o.path.split_once('/').map_or("", |p| p.1),
                        o.sha256
                    )
                })
                .collect();
            fsutil::sha256_bytes(joined.join("\n").as_bytes())
        });
        let m = Manifest {
            format_version: gnno_core::FORMAT_VERSION,
            stage: s.as_str().into(),
            gnno_version: env!("CARGO_PKG_VERSION").into(),
            run_dir: run_dir.clone(),
            settings_hash,
            settings,
            inputs,
            outputs,
            fingerprint,
            report,
            timings_s: timings,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        if std::env::var("GNNO_FAULT_BEFORE_PUBLISH").is_ok_and(|v| v == s.as_str()) {
            // Test hook: die like a killed process between writing data and publishing.
            std::process::abort();
        }
        if let Some(marker) = std::env::var("GNNO_FAULT_PAUSE_BEFORE_PUBLISH")
            .ok()
            .and_then(|v| v.strip_prefix(&format!("{s}:")).map(PathBuf::from))
        {
            // Test hook: say so in `marker`, then wait to be killed (SIGKILL at a
            // known point, not after a guessed delay).
            std::fs::write(&marker, std::process::id().to_string()).at(&marker)?;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
        m.publish(&dir)?;
        // Older run folders are no longer referenced: remove them.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("run-") && name != run_dir {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        tracing::info!(
            stage = s.as_str(),
            seconds = format!("{elapsed:.2}"),
            "stage published"
        );
        Ok(m)
    }

    /// `gnno run`: every stage in order (up to `to`), skipping those up to date.
    pub fn run_all(
        &self,
        from: Option<StageName>,
        to: Option<StageName>,
        force: bool,
        progress: &dyn Progress,
    ) -> Result<Vec<(StageName, bool)>> {
        let _lock = Lock::acquire(self.workdir())?;
        let mut done = Vec::new();
        for s in StageName::ALL {
            if to.is_some_and(|t| s > t) {
                break;
            }
            let forced = force || from.is_some_and(|f| s >= f);
            let state = self.state(s)?;
            if !forced && state == State::UpToDate {
                tracing::info!(stage = s.as_str(), "up to date, skipped");
                done.push((s, false));
                continue;
            }
            if let State::Stale { reasons } = &state {
                tracing::info!(stage = s.as_str(), why = reasons.join("; "), "stale");
            }
            self.execute(s, progress)?;
            done.push((s, true));
        }
        Ok(done)
    }

    /// `gnno stage S`: one stage alone.
    pub fn run_one(&self, s: StageName, force: bool, progress: &dyn Progress) -> Result<bool> {
        let _lock = Lock::acquire(self.workdir())?;
        for &u in s.upstream() {
            if let State::Stale { reasons } = self.state(u)? {
                tracing::warn!(
                    stage = u.as_str(),
                    why = reasons.join("; "),
                    "upstream stage is stale; using its last published output"
                );
            }
        }
        if !force && self.state(s)? == State::UpToDate {
            tracing::info!(
                stage = s.as_str(),
                "up to date, skipped (use --force to rerun)"
            );
            return Ok(false);
        }
        self.execute(s, progress)?;
        Ok(true)
    }
}

/// Key paths whose values differ between two settings trees.
fn diff_settings(old: &serde_json::Value, new: &serde_json::Value, path: &str) -> Vec<String> {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    diff_settings(
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                        &p,
                    )
                })
                .collect()
        }
        (a, b) if a == b => vec![],
        (a, b) => vec![format!(
            "setting {} changed: {a} -> {b}",
            path.replace('_', "-")
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_would_block_means_busy_and_other_lock_errors_name_the_file() {
        let p = Path::new("/w/.lock");
        assert!(!lock_is_busy(Ok(()), p).expect("free"));
        assert!(lock_is_busy(Err(std::fs::TryLockError::WouldBlock), p).expect("busy"));
        let enolck = std::io::Error::from_raw_os_error(libc::ENOLCK);
        let e = lock_is_busy(Err(std::fs::TryLockError::Error(enolck)), p)
            .expect_err("ENOLCK is not busy");
        assert!(e.to_string().starts_with("/w/.lock: "), "{e}");
        assert!(!e.is_user_error(), "an internal error (exit 1): {e}");
    }
}

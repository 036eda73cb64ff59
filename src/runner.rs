//! The stage runner: up-to-date checks, the workdir lock, and publication.
//!
//! Each stage writes into `<workdir>/<stage>/run-<key>/`, where the key hashes the
//! stage's settings and input fingerprints, then publishes `<workdir>/<stage>/manifest.json`
//! by atomic rename. Until that rename, the previous manifest and the run folder it
//! names stay untouched, so a killed stage never damages the last good output. A
//! rerun with the same key reuses the folder, which lets the negatives stage keep
//! the shards a killed run finished.
//!
//! Before publishing, the stage's gates are checked against the figures of the run
//! published before (the last accepted one); a failed gate publishes nothing. Each
//! publication keeps a copy of its manifest in `<stage>/published/`, and the last
//! `run.keep-runs` runs stay on disk so that `gnno rollback` can publish one again.
//! Every outcome is appended to the run history (src/history.rs).

use crate::gates::{self, GateFailed};
use crate::history::{self, GateCheck, Outcome};
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
                gnno_ingest::parse::resolve_inputs(&self.cfg.ingest.inputs, &self.cfg.folder)?;
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

    /// Run one stage, check its gates and publish its manifest; every outcome,
    /// failures included, is appended to the run history.
    pub fn execute(
        &self,
        s: StageName,
        opts: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<Manifest> {
        let t0 = Instant::now();
        let previous = self.manifest(s).ok().flatten();
        let result = self.execute_inner(s, opts, previous.as_ref(), progress);
        let wall = t0.elapsed().as_secs_f64();
        let rec = match &result {
            Ok((m, gates)) => {
                let overridden = gates.iter().any(|g| !g.passed);
                let o = if overridden {
                    Outcome::Overridden
                } else {
                    Outcome::Published
                };
                history::Record {
                    gates: gates.clone(),
                    ..self.record(s, o, Some(m), wall)
                }
            }
            Err(e) => match e.downcast_ref::<GateFailed>() {
                // The rejected run's folder and figures, for the on-call person.
                Some(g) => history::Record {
                    gates: g.failed.clone(),
                    run_dir: Some(g.run_dir.clone()),
                    figures: g.figures.clone(),
                    ..self.record(s, Outcome::GateFailed, None, wall)
                },
                None => history::Record {
                    error: Some(format!("{e:#}")),
                    ..self.record(s, Outcome::Failed, None, wall)
                },
            },
        };
        if let Err(e) = history::append(self.workdir(), &rec) {
            tracing::warn!(error = %e, "could not append to the run history");
        }
        result.map(|(m, _)| m)
    }

    /// A history record of stage `s`; `m` is the manifest it published, if any.
    fn record(
        &self,
        s: StageName,
        outcome: Outcome,
        m: Option<&Manifest>,
        wall_s: f64,
    ) -> history::Record {
        let now = history::now_unix();
        history::Record {
            invocation: history::invocation().to_owned(),
            time_unix: now,
            time: history::rfc3339(now),
            stage: s.as_str().to_owned(),
            outcome,
            gnno_version: env!("CARGO_PKG_VERSION").into(),
            settings_hash: m.map_or_else(
                || manifest::settings_hash(&self.settings(s)),
                |m| m.settings_hash.clone(),
            ),
            // Without a manifest (a failure), the inputs as they are now, if readable.
            inputs: m
                .map(|m| m.inputs.clone())
                .or_else(|| {
                    self.inputs(s, self.manifest(s).ok().flatten().as_ref())
                        .ok()
                })
                .unwrap_or_default()
                .into_iter()
                .map(|i| (i.name, i.fingerprint))
                .collect(),
            run_dir: m.map(|m| m.run_dir.clone()),
            fingerprint: m.map(|m| m.fingerprint.clone()),
            figures: m.map(|m| s.stage().figures(&m.report)).unwrap_or_default(),
            wall_s,
            gates: Vec::new(),
            error: None,
        }
    }

    fn execute_inner(
        &self,
        s: StageName,
        opts: &RunOptions,
        previous: Option<&Manifest>,
        progress: &dyn Progress,
    ) -> Result<(Manifest, Vec<GateCheck>)> {
        let dir = self.stage_dir(s);
        fsutil::create_dir_durable(&dir)?;
        let settings = self.settings(s);
        let settings_hash = manifest::settings_hash(&settings);
        let inputs = self.inputs(s, previous)?;
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
        let kept = kept_runs(&dir)?;
        if previous.is_some_and(|p| p.run_dir == run_dir)
            || kept.iter().any(|k| k.run_dir == run_dir)
        {
            // A forced rerun, or inputs equal to a kept earlier run's: never write
            // into a folder that is (or may be rolled back to) a published output.
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
        if s != StageName::Ingest {
            // Large per-batch and per-shard buffers are reused instead of re-faulted.
            // Not for ingest: its columns grow by reallocation, and a heap that is
            // never trimmed keeps every outgrown copy (peak RSS 2117 against 917 MiB
            // on 20M rows, `cargo bench --bench stages -- ingest`).
            gnno_train::alloc::keep_large_blocks();
        }
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
        // Gates: checked on the figures just made, against the last accepted run,
        // before anything is published.
        let figures = s.stage().figures(&report);
        let base_figures = previous.map(|p| s.stage().figures(&p.report));
        let baseline = previous
            .zip(base_figures.as_ref())
            .map(|(p, f)| (p.run_dir.as_str(), f));
        let checks = gates::check(&self.cfg.gates, s.as_str(), &figures, baseline);
        let failed: Vec<GateCheck> = checks.iter().filter(|c| !c.passed).cloned().collect();
        if !failed.is_empty() {
            if opts.override_gates.contains(&s) {
                for c in &failed {
                    tracing::warn!(
                        stage = s.as_str(),
                        gate = gates::describe(c),
                        "gate overridden"
                    );
                }
            } else {
                return Err(GateFailed {
                    stage: s.as_str().to_owned(),
                    run_dir,
                    failed,
                    figures,
                }
                .into());
            }
        }
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
        // The run is published: what follows only keeps a copy for rollback, points
        // `current` at it and tidies up. A failure here is a warning, and every
        // run repairs `current` (reconcile_current) and retries the tidying.
        if let Err(e) = keep_run(&dir, &kept, &m) {
            tracing::warn!(stage = s.as_str(), error = %e, "could not keep a copy of the manifest for rollback");
        }
        if s == StageName::Export {
            if let Err(e) = self.reconcile_current() {
                tracing::warn!(error = %e, "could not point `current` at the new export");
            }
        }
        if let Err(e) = self.retain(s, &run_dir) {
            tracing::warn!(stage = s.as_str(), error = %e, "could not remove old run folders");
        }
        tracing::info!(
            stage = s.as_str(),
            seconds = format!("{elapsed:.2}"),
            "stage published"
        );
        Ok((m, checks))
    }

    /// Keep the last `run.keep-runs` published runs of a stage (and the current one,
    /// which after a rollback may be older); remove every other run folder.
    fn retain(&self, s: StageName, current: &str) -> Result<()> {
        let dir = self.stage_dir(s);
        let kept = kept_runs(&dir)?;
        let n = self.cfg.run.keep_runs as usize;
        let cut = kept.len().saturating_sub(n);
        let mut keep: std::collections::BTreeSet<String> =
            kept[cut..].iter().map(|k| k.run_dir.clone()).collect();
        keep.insert(current.to_owned());
        for k in &kept[..cut] {
            if !keep.contains(&k.run_dir) {
                std::fs::remove_file(&k.path).at(&k.path)?;
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("run-") && !keep.contains(&name) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(())
    }

    /// The stage's kept published runs, oldest first, and which one is published now.
    pub fn kept(&self, s: StageName) -> Result<(Vec<KeptRun>, Option<Manifest>)> {
        let dir = self.stage_dir(s);
        Ok((kept_runs(&dir)?, self.manifest(s)?))
    }

    /// The first kept (or the published) manifest of a stage that `pick` accepts,
    /// newest first; a usage error listing the kept runs otherwise.
    pub fn kept_manifest(
        &self,
        s: StageName,
        pick: impl Fn(&Manifest) -> bool,
    ) -> Result<Manifest> {
        let dir = self.stage_dir(s);
        let kept = kept_runs(&dir)?;
        let mut seen = Vec::new();
        let published = self.manifest(s)?;
        for m in published
            .into_iter()
            .map(Ok)
            .chain(kept.iter().rev().map(|k| read_kept(&k.path)))
        {
            let m = m?;
            if pick(&m) {
                return Ok(m);
            }
            seen.push(m.run_dir);
        }
        Err(gnno_core::Error::usage(format!(
            "stage {s} keeps no such run (kept: {})",
            seen.join(", ")
        ))
        .with_hint("`gnno history --stage <stage>` names each night's run; raise run.keep-runs to keep more")
        .into())
    }

    /// `gnno rollback`: publish an earlier kept run of a stage again (by default the
    /// last one published before the current one, other than it), together with
    /// the kept runs of its upstream stages that it was made from, so the workdir
    /// stays consistent: a rolled-back export is not redone from the newer model
    /// by the next `gnno run`. Every run involved has its checksums verified
    /// before anything is published. Returns what was published, upstream first.
    pub fn rollback(&self, s: StageName, to: Option<&str>) -> Result<Vec<(StageName, Manifest)>> {
        let _lock = Lock::acquire(self.workdir())?;
        let t0 = Instant::now();
        let kept = kept_runs(&self.stage_dir(s))?;
        let current = self.manifest(s)?;
        let cur = current.as_ref().map(|m| m.run_dir.as_str());
        let names = || {
            kept.iter()
                .map(|k| k.run_dir.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let target = match to {
            Some(name) => {
                let mut hits: Vec<&KeptRun> = kept
                    .iter()
                    .filter(|k| k.run_dir == name || k.run_dir.starts_with(name))
                    .collect();
                hits.dedup_by(|a, b| a.run_dir == b.run_dir);
                let distinct: std::collections::BTreeSet<&str> =
                    hits.iter().map(|k| k.run_dir.as_str()).collect();
                match (hits.last(), distinct.len()) {
                    (Some(k), 1) => *k,
                    (None, _) => {
                        return Err(gnno_core::Error::usage(format!(
                            "stage {s} keeps no run {name:?}; kept: {}",
                            names()
                        ))
                        .into())
                    }
                    _ => {
                        return Err(gnno_core::Error::usage(format!(
                            "{name:?} names several kept runs of stage {s}: {}",
                            distinct.into_iter().collect::<Vec<_>>().join(", ")
                        ))
                        .into())
                    }
                }
            }
            None => {
                let pos = kept.iter().rposition(|k| Some(k.run_dir.as_str()) == cur);
                pos.and_then(|p| {
                    kept[..p]
                        .iter()
                        .rev()
                        .find(|k| Some(k.run_dir.as_str()) != cur)
                })
                .ok_or_else(|| {
                    gnno_core::Error::usage(format!(
                        "stage {s} keeps no run published before the current one"
                    ))
                    .with_hint("raise run.keep-runs to keep more runs for rollback")
                })?
            }
        };
        let m = read_kept(&target.path)?;
        // The consistent set: the target, then for each stage in it, the kept run
        // of each upstream stage with the fingerprint it read.
        let mut plan: std::collections::BTreeMap<StageName, Manifest> =
            std::collections::BTreeMap::from([(s, m)]);
        let mut todo = vec![s];
        while let Some(d) = todo.pop() {
            for &u in d.upstream() {
                let want = plan[&d]
                    .inputs
                    .iter()
                    .find(|i| i.name == u.as_str())
                    .map(|i| i.fingerprint.clone())
                    .unwrap_or_default();
                if let Some(p) = plan.get(&u) {
                    if p.fingerprint != want {
                        return Err(gnno_core::Error::usage(format!(
                            "the kept runs to roll back to read different {u} runs; roll back {u} first"
                        ))
                        .into());
                    }
                    continue;
                }
                let um = self
                    .kept_manifest(u, |k| k.fingerprint == want)
                    .map_err(|e| {
                        e.context(format!(
                            "{s} run {} was made from a {u} run that is no longer kept",
                            plan[&s].run_dir
                        ))
                    })?;
                plan.insert(u, um);
                todo.push(u);
            }
        }
        for (st, m) in &plan {
            m.verify_outputs(&self.stage_dir(*st), true)?;
        }
        let mut done = Vec::new();
        for (st, m) in plan {
            let dir = self.stage_dir(st);
            if self.manifest(st)?.is_some_and(|p| p.run_dir == m.run_dir) {
                continue;
            }
            m.publish(&dir)?;
            // The republished run becomes the newest kept one, so retention keeps it.
            keep_run(&dir, &kept_runs(&dir)?, &m)?;
            let rec = self.record(
                st,
                Outcome::RolledBack,
                Some(&m),
                t0.elapsed().as_secs_f64(),
            );
            if let Err(e) = history::append(self.workdir(), &rec) {
                tracing::warn!(error = %e, "could not append to the run history");
            }
            done.push((st, m));
        }
        self.reconcile_current()?;
        Ok(done)
    }

    /// Point `current` at the published export when it does not already: after a
    /// crash between publishing an export and switching the link, the next run
    /// (or rollback) repairs it.
    pub fn reconcile_current(&self) -> Result<()> {
        let Some(m) = self.manifest(StageName::Export)? else {
            return Ok(());
        };
        let target = Path::new(StageName::Export.as_str()).join(&m.run_dir);
        let link = self.workdir().join(CURRENT_LINK);
        if std::fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            switch_current(self.workdir(), &target)?;
        }
        Ok(())
    }

    /// `gnno run`: every stage in order (up to `to`), skipping those up to date.
    /// Skipped stages are recorded in the history as up to date, with the figures
    /// of their published run, so every night shows every stage.
    pub fn run_all(
        &self,
        from: Option<StageName>,
        to: Option<StageName>,
        opts: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<Vec<(StageName, bool)>> {
        let _lock = Lock::acquire(self.workdir())?;
        self.reconcile_current()?;
        let mut done = Vec::new();
        for s in StageName::ALL {
            if to.is_some_and(|t| s > t) {
                break;
            }
            let forced = opts.force || from.is_some_and(|f| s >= f);
            let state = match self.state(s) {
                Ok(st) => st,
                Err(e) => {
                    // An input that cannot be read (a glob that matches nothing, an
                    // unreadable log) fails the night before the stage runs.
                    self.append_failed(s, &e);
                    return Err(e);
                }
            };
            if !forced && state == State::UpToDate {
                tracing::info!(stage = s.as_str(), "up to date, skipped");
                self.append_up_to_date(s);
                done.push((s, false));
                continue;
            }
            if let State::Stale { reasons } = &state {
                tracing::info!(stage = s.as_str(), why = reasons.join("; "), "stale");
            }
            self.execute(s, opts, progress)?;
            done.push((s, true));
        }
        Ok(done)
    }

    fn append_up_to_date(&self, s: StageName) {
        let m = self.manifest(s).ok().flatten();
        let rec = self.record(s, Outcome::UpToDate, m.as_ref(), 0.0);
        if let Err(e) = history::append(self.workdir(), &rec) {
            tracing::warn!(error = %e, "could not append to the run history");
        }
    }

    fn append_failed(&self, s: StageName, e: &anyhow::Error) {
        let rec = history::Record {
            error: Some(format!("{e:#}")),
            ..self.record(s, Outcome::Failed, None, 0.0)
        };
        if let Err(e) = history::append(self.workdir(), &rec) {
            tracing::warn!(error = %e, "could not append to the run history");
        }
    }

    /// `gnno stage S`: one stage alone.
    pub fn run_one(
        &self,
        s: StageName,
        opts: &RunOptions,
        progress: &dyn Progress,
    ) -> Result<bool> {
        let _lock = Lock::acquire(self.workdir())?;
        let check = || -> Result<State> {
            for &u in s.upstream() {
                if let State::Stale { reasons } = self.state(u)? {
                    tracing::warn!(
                        stage = u.as_str(),
                        why = reasons.join("; "),
                        "upstream stage is stale; using its last published output"
                    );
                }
            }
            self.state(s)
        };
        let state = check().inspect_err(|e| self.append_failed(s, e))?;
        if !opts.force && state == State::UpToDate {
            tracing::info!(
                stage = s.as_str(),
                "up to date, skipped (use --force to rerun)"
            );
            self.append_up_to_date(s);
            return Ok(false);
        }
        self.execute(s, opts, progress)?;
        Ok(true)
    }
}

/// How `gnno run` and `gnno stage` treat up-to-date stages and failed gates.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Rerun even when up to date.
    pub force: bool,
    /// Stages that publish although a gate of theirs failed (recorded as
    /// `overridden`); the gates of every other stage still hold.
    pub override_gates: Vec<StageName>,
}

/// Folder of the kept copies of published manifests, one per publication.
pub const PUBLISHED_DIR: &str = "published";

/// A kept published run: `<stage>/published/<seq>-<run_dir>.json`.
#[derive(Debug, Clone)]
pub struct KeptRun {
    pub seq: u64,
    pub run_dir: String,
    pub path: PathBuf,
}

/// The kept runs of a stage folder, in publication order.
fn kept_runs(stage_dir: &Path) -> Result<Vec<KeptRun>> {
    let dir = stage_dir.join(PUBLISHED_DIR);
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(gnno_core::Error::io(&dir, e).into()),
    };
    for e in entries {
        let e = e.at(&dir)?;
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let Some((seq, run_dir)) = stem.split_once('-') else {
            continue;
        };
        if let Ok(seq) = seq.parse() {
            out.push(KeptRun {
                seq,
                run_dir: run_dir.to_owned(),
                path: e.path(),
            });
        }
    }
    out.sort_by_key(|k| k.seq);
    Ok(out)
}

/// A kept manifest.
fn read_kept(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(serde_json::from_str(&text)
        .map_err(|e| gnno_core::Error::artifact(path, format!("not a gnno manifest: {e}")))?)
}

/// Keep a copy of a published manifest.
fn keep_run(stage_dir: &Path, kept: &[KeptRun], m: &Manifest) -> Result<()> {
    let dir = stage_dir.join(PUBLISHED_DIR);
    fsutil::create_dir_durable(&dir)?;
    let seq = kept.last().map_or(1, |k| k.seq + 1);
    let text = serde_json::to_vec_pretty(m)?;
    fsutil::write_atomic(&dir.join(format!("{seq:06}-{}.json", m.run_dir)), &text)?;
    Ok(())
}

/// Name of the link to the last accepted export.
pub const CURRENT_LINK: &str = "current";

/// Point `<workdir>/current` at `target` (relative to the workdir) atomically: a new
/// link under a temporary name renamed over the old one, so a reader sees either
/// the previous export or the new one, never neither.
pub fn switch_current(workdir: &Path, target: &Path) -> Result<()> {
    let link = workdir.join(CURRENT_LINK);
    let tmp = workdir.join(format!(".{CURRENT_LINK}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).at(&tmp)?;
    std::fs::rename(&tmp, &link).at(&link)?;
    fsutil::sync_dir(workdir)?;
    Ok(())
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

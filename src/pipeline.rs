//! The workdir as the stages see it: the config, where each stage's folder is, and
//! the published outputs of upstream stages. Both the runner and the stages depend
//! on this module; it depends on neither.

use crate::stages::{StageName, STORE_DIR};
use anyhow::Result;
use gnno_core::config::Config;
use gnno_core::dataset::Dataset;
use gnno_core::manifest::Manifest;
use std::path::{Path, PathBuf};

pub struct Pipeline {
    pub cfg: Config,
}

impl Pipeline {
    pub fn load(config: &Path) -> Result<Self> {
        Ok(Self {
            cfg: Config::load(config)?,
        })
    }

    pub fn workdir(&self) -> &Path {
        &self.cfg.run.workdir
    }

    pub fn stage_dir(&self, s: StageName) -> PathBuf {
        self.workdir().join(s.as_str())
    }

    pub fn manifest(&self, s: StageName) -> Result<Option<Manifest>> {
        Ok(Manifest::read(&self.stage_dir(s))?)
    }

    /// The published manifest of an upstream stage, or a usage error.
    pub fn require(&self, s: StageName) -> Result<(Manifest, PathBuf)> {
        let dir = self.stage_dir(s);
        let m = Manifest::read(&dir)?.ok_or_else(|| {
            gnno_core::Error::usage(format!(
                "stage {s} has no published output in {}",
                self.workdir().display()
            ))
            .with_hint(format!("run `gnno run --to {s}` first"))
        })?;
        let run = m.run_path(&dir);
        Ok((m, run))
    }

    /// The folder of the last accepted export: where `<workdir>/current` points,
    /// resolved; None before the first one (no link). A link whose folder is gone
    /// is an error naming it, not a silent cold start.
    pub fn current_export(&self) -> Result<Option<PathBuf>> {
        let link = self.workdir().join("current");
        match std::fs::symlink_metadata(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(gnno_core::Error::io(&link, e).into()),
            Ok(_) => {}
        }
        let dir = std::fs::canonicalize(&link).map_err(|e| {
            gnno_core::Error::usage(format!(
                "{}: the last accepted export it points to cannot be read: {e}",
                link.display()
            ))
            .with_hint("restore that export folder, or remove the link to train from scratch")
        })?;
        Ok(Some(dir))
    }

    /// The ingest output, loaded, with its fingerprint.
    pub fn dataset(&self) -> Result<(Dataset, String)> {
        let (m, dir) = self.require(StageName::Ingest)?;
        Ok((Dataset::load(&dir)?, m.fingerprint))
    }

    /// The published graph store, opened from a private snapshot so that reading it
    /// never changes the published files (sled writes to a database it opens) and
    /// never waits for a run that holds it.
    pub fn graph_store(&self, expect_input: Option<&str>) -> Result<gnno_store::Snapshot> {
        let (_, gdir) = self.require(StageName::Graph)?;
        Ok(gnno_store::Store::open_snapshot(
            &gdir.join(STORE_DIR),
            expect_input,
        )?)
    }
}

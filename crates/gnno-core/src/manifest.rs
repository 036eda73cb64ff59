//! The stage manifest: the single file whose atomic publication makes a stage's
//! output complete. Nothing a stage writes counts until its manifest is renamed
//! into place; a stage killed earlier leaves the previous manifest, and the files
//! it names, untouched.

use crate::error::{Error, IoContext, Result};
use crate::fsutil;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const MANIFEST_FILE: &str = "manifest.json";

/// One input a stage read, and the fingerprint it had.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InputRef {
    /// An upstream stage name, or `file:<path>` for a raw input file.
    pub name: String,
    pub fingerprint: String,
    /// For raw files: size and modification time, to skip rehashing unchanged files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i128>,
}

/// One output file, relative to the stage folder.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// A folder kept as one unit (the sled store): its files change whenever it is
    /// opened, so `sha256` is its logical content fingerprint and only its presence
    /// is verified.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opaque_dir: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub stage: String,
    pub gnno_version: String,
    /// Folder (relative to the stage folder) holding this run's outputs.
    pub run_dir: String,
    pub settings_hash: String,
    pub settings: serde_json::Value,
    pub inputs: Vec<InputRef>,
    pub outputs: Vec<OutputFile>,
    /// Content fingerprint that downstream stages record as their input.
    pub fingerprint: String,
    pub report: serde_json::Value,
    pub timings_s: BTreeMap<String, f64>,
    pub created_unix: u64,
}

impl Manifest {
    pub fn path(stage_dir: &Path) -> PathBuf {
        stage_dir.join(MANIFEST_FILE)
    }

    /// Read the published manifest of a stage, if any.
    pub fn read(stage_dir: &Path) -> Result<Option<Self>> {
        let p = Self::path(stage_dir);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(p, e)),
        };
        let m: Self = serde_json::from_str(&text)
            .map_err(|e| Error::artifact(&p, format!("not a gnno manifest: {e}")))?;
        if m.format_version != crate::FORMAT_VERSION {
            return Err(Error::artifact(
                &p,
                format!(
                    "format version {} (this build reads {})",
                    m.format_version,
                    crate::FORMAT_VERSION
                ),
            )
            .with_hint("rerun the stage with --force to rebuild it in the current format"));
        }
        Ok(Some(m))
    }

    /// Publish atomically: write to a temp name, fsync, rename, fsync the folder.
    pub fn publish(&self, stage_dir: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| Error::internal(e.to_string()))?;
        fsutil::write_atomic(&Self::path(stage_dir), &text)
    }

    /// Absolute folder of the outputs.
    pub fn run_path(&self, stage_dir: &Path) -> PathBuf {
        stage_dir.join(&self.run_dir)
    }

    /// Check that every listed output still exists with its recorded size; with
    /// `checksums`, also its SHA-256.
    pub fn verify_outputs(&self, stage_dir: &Path, checksums: bool) -> Result<()> {
        for o in &self.outputs {
            let p = stage_dir.join(&o.path);
            if o.opaque_dir {
                if !p.is_dir() {
                    return Err(Error::artifact(
                        &p,
                        "the folder listed in the manifest is missing",
                    )
                    .with_hint("rerun the stage with --force"));
                }
                continue;
            }
            let md = std::fs::metadata(&p).at(&p)?;
            if md.len() != o.bytes {
                return Err(Error::artifact(
                    &p,
                    format!("size {} differs from the manifest's {}", md.len(), o.bytes),
                )
                .with_hint(
                    "the output was changed after publication; rerun the stage with --force",
                ));
            }
            if checksums && fsutil::sha256_file(&p)? != o.sha256 {
                return Err(Error::artifact(&p, "checksum differs from the manifest")
                    .with_hint("the output was damaged; rerun the stage with --force"));
            }
        }
        Ok(())
    }
}

/// Describe every file in `run_dir` (relative to `stage_dir`) for a manifest.
/// `opaque` names sub-folders kept as one unit, with their content fingerprints.
pub fn describe_outputs(
    stage_dir: &Path,
    run_dir: &str,
    rows: &BTreeMap<String, u64>,
    opaque: &BTreeMap<String, String>,
) -> Result<Vec<OutputFile>> {
    let dir = stage_dir.join(run_dir);
    let mut out = Vec::new();
    for (sub, fingerprint) in opaque {
        out.push(OutputFile {
            path: format!("{run_dir}/{sub}"),
            bytes: fsutil::dir_size(&dir.join(sub))?,
            sha256: fingerprint.clone(),
            rows: rows.get(sub).copied(),
            opaque_dir: true,
        });
    }
    for rel in fsutil::list_files(&dir)? {
        if opaque.keys().any(|sub| rel.starts_with(sub)) {
            continue;
        }
        let p = dir.join(&rel);
        let rel_s = format!("{run_dir}/{}", rel.to_string_lossy());
        out.push(OutputFile {
            bytes: std::fs::metadata(&p).at(&p)?.len(),
            sha256: fsutil::sha256_file(&p)?,
            rows: rows.get(&rel.to_string_lossy().to_string()).copied(),
            path: rel_s,
            opaque_dir: false,
        });
    }
    Ok(out)
}

/// Hash of settings as canonical JSON.
pub fn settings_hash(settings: &serde_json::Value) -> String {
    fsutil::sha256_bytes(settings.to_string().as_bytes())
}

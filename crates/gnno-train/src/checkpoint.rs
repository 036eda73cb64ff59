//! Checkpoints: the model's (and the optimiser's) named tensors in one tch archive,
//! and the JSON state that names the archive. Tensors are written first and the state
//! last, each by temp file, fsync and rename, so a state on disk always names
//! tensors that are complete.

use crate::{torch, EpochRow};
use gnno_core::error::{Error, Result};
use gnno_core::fsutil;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{nn, Tensor};

/// Resume state written after every epoch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    pub next_epoch: u32,
    pub best_score: f64,
    pub best_epoch: Option<u32>,
    pub bad_epochs: u32,
    pub history: Vec<EpochRow>,
    /// File name (in the checkpoint folder) of the tensors this state describes.
    pub tensors: String,
    /// Where a warm-started run started from; None for a cold start.
    #[serde(default)]
    pub warm_start: Option<crate::warm::WarmStartInfo>,
}

impl CheckpointState {
    pub fn fresh() -> Self {
        Self {
            next_epoch: 0,
            best_score: f64::NEG_INFINITY,
            best_epoch: None,
            bad_epochs: 0,
            history: Vec::new(),
            tensors: String::new(),
            warm_start: None,
        }
    }

    /// The state of a killed run, if one was saved.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::artifact(path, format!("damaged checkpoint state: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        fsutil::write_atomic(
            path,
            &serde_json::to_vec_pretty(self).map_err(|e| Error::internal(e.to_string()))?,
        )
    }
}

/// Save named tensors atomically.
pub fn save_named(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let tmp = fsutil::tmp_path(path);
    Tensor::save_multi(named, &tmp).map_err(|e| torch(&e, &format!("saving {}", tmp.display())))?;
    fsutil::sync_file(&tmp)?;
    fsutil::publish(&tmp, path)
}

pub fn load_named(path: &Path) -> Result<Vec<(String, Tensor)>> {
    Tensor::load_multi(path).map_err(|e| Error::artifact(path, format!("cannot load tensors: {e}")))
}

/// The model's variables as `model.<name>`, sorted by name.
pub fn model_tensors(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, t)| (format!("model.{k}"), t))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copy `model.<name>` tensors into the variables of `vs`; every variable must be
/// present with its shape.
pub fn load_model_tensors(
    vs: &mut nn::VarStore,
    named: &[(String, Tensor)],
    path: &Path,
) -> Result<()> {
    let vars = vs.variables();
    tch::no_grad(|| {
        for (k, t) in &vars {
            let want = format!("model.{k}");
            let Some((_, src)) = named.iter().find(|(n, _)| *n == want) else {
                return Err(
                    Error::artifact(path, format!("checkpoint lacks tensor {want}"))
                        .with_hint("the checkpoint was written for another model configuration"),
                );
            };
            if src.size() != t.size() {
                return Err(Error::artifact(
                    path,
                    format!(
                        "tensor {want} has shape {:?}, the model needs {:?}",
                        src.size(),
                        t.size()
                    ),
                ));
            }
            let mut t = t.shallow_clone();
            t.copy_(&src.to_device(t.device()));
        }
        Ok(())
    })
}

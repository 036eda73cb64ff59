//! Checkpoints: the model's (and the optimiser's) named tensors in one tch archive,
//! and the JSON state that names the archive. Tensors are written first and the state
//! last, each by temp file, fsync and rename, so a state on disk always names
//! tensors that are complete.

use crate::{torch, EpochRow};
use gnno_core::error::{Error, IoContext, Result};
use gnno_core::fsutil;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
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

/// Save named tensors atomically (temp file, fsync, rename; on error the temp file
/// is removed and a file already at `path` stays as it was).
///
/// libtorch does not write the file itself: when one of its writes fails part-way
/// (a full disk), its archive writer throws again from its destructor and the
/// process aborts with a C++ trace. It writes through [`Sink`] instead, which
/// never fails towards libtorch, and the first error is reported here.
pub fn save_named(path: &Path, named: &[(String, Tensor)]) -> Result<()> {
    let tmp = fsutil::tmp_path(path);
    fsutil::write_with(path, |f| {
        let sink = Sink::new(f.try_clone().at(&tmp)?);
        Tensor::save_multi_to_stream(named, sink.clone())
            .map_err(|e| torch(&e, &format!("saving {}", tmp.display())))?;
        sink.finish().at(&tmp)
    })
}

/// A writer for libtorch that keeps its first I/O error instead of returning it
/// (see [`save_named`]); after an error it discards what it is given. libtorch
/// owns (and drops) its copy, so the state is shared.
#[derive(Clone)]
struct Sink(Arc<Mutex<SinkState>>);

struct SinkState {
    out: BufWriter<File>,
    err: Option<io::Error>,
}

impl Sink {
    fn new(file: File) -> Self {
        Self(Arc::new(Mutex::new(SinkState {
            out: BufWriter::with_capacity(1 << 20, file),
            err: None,
        })))
    }

    /// Flush, and the first error of any write.
    fn finish(&self) -> io::Result<()> {
        let mut s = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match s.err.take() {
            Some(e) => Err(e),
            None => s.out.flush(),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if s.err.is_none() {
            if let Err(e) = s.out.write_all(buf) {
                s.err = Some(e);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
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

//! Checkpoints: the model's (and the optimiser's) named tensors in one tch archive,
//! and the JSON state that names the archive. Tensors are written first and the state
//! last, each by temp file, fsync and rename, so a state on disk always names
//! tensors that are complete.

use crate::{torch, EpochRow};
use gnno_core::error::{Error, IoContext, Result};
use gnno_core::fsutil;
use serde::{Deserialize, Serialize};
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
    fsutil::write_with(path, |f, tmp| {
        let sink = Sink::new(f.try_clone().at(tmp)?);
        let saved = Tensor::save_multi_to_stream(named, sink.clone());
        // A write error first: it is the cause of any libtorch error after it.
        sink.finish().at(tmp)?;
        saved.map_err(|e| torch(&e, &format!("saving {}", tmp.display())))
    })
}

/// A writer for libtorch that keeps its first I/O error instead of returning it
/// (see [`save_named`]); after an error it discards what it is given. libtorch
/// owns (and drops) its copy, so the state is shared.
struct Sink<W: Write>(Arc<Mutex<SinkState<W>>>);

impl<W: Write> Clone for Sink<W> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

struct SinkState<W: Write> {
    out: BufWriter<W>,
    err: Option<io::Error>,
}

impl<W: Write> Sink<W> {
    fn new(out: W) -> Self {
        Self(Arc::new(Mutex::new(SinkState {
            out: BufWriter::with_capacity(64 << 10, out),
            err: None,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SinkState<W>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Flush, and the first error of any write.
    fn finish(&self) -> io::Result<()> {
        let mut s = self.state();
        match s.err.take() {
            Some(e) => Err(e),
            None => s.out.flush(),
        }
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.state();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes `room` bytes, then fails as a full disk does.
    struct Full {
        room: usize,
        taken: Arc<Mutex<usize>>,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut taken = self.taken.lock().expect("lock");
            if *taken + buf.len() > self.room {
                return Err(io::Error::from(io::ErrorKind::StorageFull));
            }
            *taken += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn named() -> Vec<(String, Tensor)> {
        // 4 x 256 KiB: well past the sink's 64 KiB buffer.
        (0..4)
            .map(|i| {
                (
                    format!("model.w{i}"),
                    Tensor::arange(65_536, (tch::Kind::Float, tch::Device::Cpu)) + f64::from(i),
                )
            })
            .collect()
    }

    #[test]
    fn a_write_that_fails_inside_libtorch_is_kept_and_reported_not_thrown() {
        // Through a writer that returned the error, libtorch aborted the process.
        let taken = Arc::new(Mutex::new(0));
        let sink = Sink::new(Full {
            room: 300_000,
            taken: Arc::clone(&taken),
        });
        let saved = Tensor::save_multi_to_stream(&named(), sink.clone());
        assert!(saved.is_ok(), "libtorch saw every write succeed: {saved:?}");
        let err = sink.finish().expect_err("the disk filled");
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        let taken = *taken.lock().expect("lock");
        assert!(
            taken <= 300_000 && taken > 200_000,
            "wrote up to the room, then nothing: {taken}"
        );
    }

    #[test]
    fn saved_tensors_load_back_equal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.ot");
        let named = named();
        save_named(&path, &named).expect("saved");
        let back = load_named(&path).expect("loaded");
        assert_eq!(back.len(), named.len());
        for ((n, t), (m, u)) in named.iter().zip(&back) {
            assert_eq!(n, m);
            assert!(t.equal(u), "{n}");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("m.ot")]);
    }
}

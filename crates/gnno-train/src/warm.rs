//! Warm start (`train.warm-start = "last-accepted"`): a new model starts from the
//! model of the last accepted export. The item index is renumbered by every
//! ingest, so the item rows are carried over by raw id: items in both get their
//! old rows, new items keep their fresh initialisation, vanished items are
//! dropped. Every other tensor must have the same name and shape (same backbone,
//! dim, layers, heads, history-len) and is copied as it is.

use crate::export::{metadata_value, ITEMS_TENSOR, MODEL_FORMAT_VERSION, OUT_ITEMS_TENSOR};
use crate::safetensors::{F32Tensor, SafeTensors};
use gnno_core::config::TrainSettings;
use gnno_core::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Tensor};

/// Where a warm-started run started from (the train report's `warm_start`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WarmStartInfo {
    /// The export folder the model came from (`<workdir>/current`, resolved).
    pub from: String,
    pub items_carried: u64,
    pub items_new: u64,
    pub items_dropped: u64,
    /// Dev value of `train.early-stop-metric` of the starting model, before any
    /// epoch: the score an epoch must beat to replace it as the best model.
    pub dev_metric: f64,
}

/// Row pairs (old row, new row) of the items present in both id lists, where
/// `old_ids[k]` / `new_ids[k]` is the raw id of row k + 1 (row 0 is padding);
/// then how many new items have no old row, and how many old items are gone.
pub fn carry_rows(old_ids: &[String], new_ids: &[String]) -> (Vec<(i64, i64)>, u64, u64) {
    let old: HashMap<&str, usize> = old_ids
        .iter()
        .enumerate()
        .map(|(k, r)| (r.as_str(), k + 1))
        .collect();
    let mut pairs = Vec::new();
    for (k, r) in new_ids.iter().enumerate() {
        if let Some(&o) = old.get(r.as_str()) {
            pairs.push((o as i64, (k + 1) as i64));
        }
    }
    let carried = pairs.len() as u64;
    (
        pairs,
        new_ids.len() as u64 - carried,
        old_ids.len() as u64 - carried,
    )
}

/// Copy the item rows of `old` (`[old_n + 2, d]`: padding, items, mask token) into
/// `new` (`[new_n + 2, d]`) by raw id, the mask token's row to the mask token's
/// row. Returns (carried, new, dropped).
pub fn carry_items(
    old: &Tensor,
    old_ids: &[String],
    new: &Tensor,
    new_ids: &[String],
) -> (u64, u64, u64) {
    let (mut pairs, fresh, dropped) = carry_rows(old_ids, new_ids);
    let carried = pairs.len() as u64;
    pairs.push((old_ids.len() as i64 + 1, new_ids.len() as i64 + 1));
    let (from, to): (Vec<i64>, Vec<i64>) = pairs.into_iter().unzip();
    let dev = new.device();
    tch::no_grad(|| {
        let rows = old
            .to_device(dev)
            .index_select(0, &Tensor::from_slice(&from).to_device(dev));
        let mut new = new.shallow_clone();
        let _ = new.index_copy_(0, &Tensor::from_slice(&to).to_device(dev), &rows);
    });
    (carried, fresh, dropped)
}

fn usage(file: &Path, msg: String) -> Error {
    Error::usage(format!("warm start from {}: {msg}", file.display())).with_hint(
        "warm start needs the model's backbone, dim, layers, heads and history-len; \
         set train.warm-start = \"off\" to train from scratch",
    )
}

/// Load the exported model `file` into `vs` (a model for `cfg` over items with
/// raw ids `item_raw`, index 0 the padding placeholder). Returns (carried, new,
/// dropped) item counts.
pub fn load(
    vs: &nn::VarStore,
    cfg: &TrainSettings,
    item_raw: &[String],
    file: &Path,
) -> Result<(u64, u64, u64)> {
    let st = SafeTensors::read(file)?;
    let version = metadata_value(&st.metadata, "format_version", file)?;
    if version != MODEL_FORMAT_VERSION.to_string() {
        return Err(Error::artifact(
            file,
            format!("model format version {version} (this build reads {MODEL_FORMAT_VERSION})"),
        ));
    }
    let backbone = crate::export::kebab(&cfg.backbone);
    let theirs = metadata_value(&st.metadata, "backbone", file)?;
    if theirs != backbone {
        return Err(usage(
            file,
            format!("the model is a {theirs}, train.backbone is {backbone}"),
        ));
    }
    let old_ids: Vec<String> =
        serde_json::from_str(metadata_value(&st.metadata, "items", file)?)
            .map_err(|e| Error::artifact(file, format!("metadata items: {e}")))?;
    let vars = vs.variables();
    if let Some(extra) = st.tensors.keys().find(|k| !vars.contains_key(*k)) {
        return Err(usage(
            file,
            format!("tensor {extra} has no place in this model"),
        ));
    }
    let new_ids = item_raw.get(1..).unwrap_or_default();
    let mut counts = (0, 0, 0);
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let t = &vars[name];
        let src: &F32Tensor = st
            .tensors
            .get(name)
            .ok_or_else(|| usage(file, format!("it has no tensor {name}")))?;
        let want = t.size();
        if name == ITEMS_TENSOR || name == OUT_ITEMS_TENSOR {
            let rows_ok = src.shape.first() == Some(&(old_ids.len() as i64 + 2));
            if src.shape.len() != 2 || src.shape[1] != want[1] {
                return Err(usage(
                    file,
                    format!(
                        "tensor {name} has shape {:?}, this model needs [_, {}]",
                        src.shape, want[1]
                    ),
                ));
            }
            if !rows_ok {
                return Err(Error::artifact(
                    file,
                    format!(
                        "tensor {name} has {} rows for {} items in its metadata",
                        src.shape[0],
                        old_ids.len()
                    ),
                ));
            }
            let old = Tensor::from_slice(&src.data).view(src.shape.as_slice());
            let c = carry_items(&old, &old_ids, t, new_ids);
            if name == ITEMS_TENSOR {
                counts = c;
            }
            continue;
        }
        if src.shape != want {
            return Err(usage(
                file,
                format!(
                    "tensor {name} has shape {:?}, this model needs {want:?}",
                    src.shape
                ),
            ));
        }
        tch::no_grad(|| {
            let mut t = t.shallow_clone();
            t.copy_(&Tensor::from_slice(&src.data).view(src.shape.as_slice()));
        });
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn items_are_carried_by_raw_id() {
        // Old rows: pad, a, b, c, mask; each row filled with its row number.
        let old = Tensor::from_slice(&[0.0f32, 0., 1., 1., 2., 2., 3., 3., 4., 4.]).view([5, 2]);
        // New rows: pad, b, d, a, mask, filled with -1 (the "fresh" initialisation).
        let new = Tensor::full([5, 2], -1.0, (Kind::Float, tch::Device::Cpu));
        let counts = carry_items(&old, &ids(&["a", "b", "c"]), &new, &ids(&["b", "d", "a"]));
        assert_eq!(counts, (2, 1, 1), "a and b carried, d new, c dropped");
        let got = Vec::<f32>::try_from(new.view([-1])).expect("values");
        assert_eq!(
            got,
            vec![-1., -1., 2., 2., -1., -1., 1., 1., 4., 4.],
            "b <- old b, d fresh, a <- old a, mask <- old mask, padding untouched"
        );
        assert_eq!(
            carry_rows(&ids(&["a", "b", "c"]), &ids(&["b", "d", "a"])),
            (vec![(2, 1), (1, 3)], 1, 1)
        );
    }

    #[test]
    fn a_model_of_another_shape_is_refused_naming_the_file_and_tensor() {
        let t = tempfile::tempdir().expect("tempdir");
        let file = t.path().join("model.safetensors");
        let mut cfg = crate::tests::settings();
        cfg.backbone = gnno_core::config::Backbone::Sasrec;
        cfg.dim = 8;
        cfg.heads = 2;
        cfg.layers = 1;
        let raw = ids(&["<pad>", "a", "b", "c"]);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let _m = crate::model::Model::new(&vs.root(), &cfg, 3);
        crate::export::model_file(&vs, &cfg, &raw)
            .expect("model file")
            .write(&file)
            .expect("write");
        // Same shapes: loads, every item carried.
        let vs2 = nn::VarStore::new(tch::Device::Cpu);
        let _m2 = crate::model::Model::new(&vs2.root(), &cfg, 3);
        assert_eq!(load(&vs2, &cfg, &raw, &file).expect("loads"), (3, 0, 0));
        let a = Vec::<f32>::try_from(vs.variables()["pos.weight"].view([-1])).expect("v");
        let b = Vec::<f32>::try_from(vs2.variables()["pos.weight"].view([-1])).expect("v");
        assert_eq!(a, b, "other tensors are copied");
        // Another history-len: the positions do not fit.
        cfg.history_len += 1;
        let vs3 = nn::VarStore::new(tch::Device::Cpu);
        let _m3 = crate::model::Model::new(&vs3.root(), &cfg, 3);
        let e = load(&vs3, &cfg, &raw, &file)
            .expect_err("shape")
            .to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("tensor pos.weight has shape"),
            "{e}"
        );
        // Two layers: block1 is missing from the file.
        cfg.history_len -= 1;
        cfg.layers = 2;
        let vs4 = nn::VarStore::new(tch::Device::Cpu);
        let _m4 = crate::model::Model::new(&vs4.root(), &cfg, 3);
        let e = load(&vs4, &cfg, &raw, &file)
            .expect_err("layers")
            .to_string();
        assert!(e.contains("no tensor block1."), "{e}");
    }
}

//! The negatives shard format (docs/FORMATS.md, "negatives"), shared by the stage that
//! writes shards and the stages that read them: schema, names, footer metadata, reader.

use crate::error::{Error, IoContext, Result};
use crate::ItemIdx;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, UInt32Type, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const COL_INSTANCE: &str = "instance";
pub const COL_USER: &str = "user";
pub const COL_TARGET: &str = "target";
pub const COL_NEGATIVES: &str = "negatives";
pub const COL_OVERLAP: &str = "overlap";
pub const COL_LOG_PROB: &str = "log_prob";
/// Version of the shard layout, in every footer as `gnno.shard_version`; readers
/// refuse any other. 2 added `log_prob`.
pub const SHARD_VERSION: u32 = 2;
pub const SHARD_VERSION_KEY: &str = "shard_version";
pub const KEY_PREFIX: &str = "gnno.";

pub fn epoch_dir(e: u32) -> String {
    format!("epoch-{e:04}")
}

pub fn shard_file(s: u64) -> String {
    format!("part-{s:05}.parquet")
}

/// The Arrow schema of a shard.
pub fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new(COL_INSTANCE, DataType::UInt64, false),
        Field::new(COL_USER, DataType::UInt32, false),
        Field::new(COL_TARGET, DataType::UInt32, false),
        Field::new(
            COL_NEGATIVES,
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, false))),
            false,
        ),
        Field::new(
            COL_OVERLAP,
            DataType::List(Arc::new(Field::new("item", DataType::Float32, false))),
            false,
        ),
        Field::new(
            COL_LOG_PROB,
            DataType::List(Arc::new(Field::new("item", DataType::Float32, false))),
            false,
        ),
    ]))
}

/// Footer metadata of a shard file.
pub fn read_meta(path: &Path) -> Result<(BTreeMap<String, String>, u64)> {
    let f = std::fs::File::open(path).at(path)?;
    let r = SerializedFileReader::new(f)
        .map_err(|e| Error::artifact(path, format!("not a readable Parquet shard: {e}")))?;
    let md = r.metadata().file_metadata();
    let rows = u64::try_from(md.num_rows()).unwrap_or(0);
    let kv = md
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    Ok((kv, rows))
}

/// One decoded shard.
#[derive(Debug, Default, Clone)]
pub struct Shard {
    pub instance: Vec<u64>,
    pub user: Vec<u32>,
    pub target: Vec<ItemIdx>,
    /// `offsets[r]..offsets[r+1]` indexes `negatives` / `overlap` of row r.
    pub offsets: Vec<usize>,
    pub negatives: Vec<ItemIdx>,
    pub overlap: Vec<f32>,
    /// ln of the probability with which the sampler drew each negative.
    pub log_prob: Vec<f32>,
}

/// Read a shard, checking its version and schema; errors name the file and what is wrong.
pub fn read(path: &Path) -> Result<Shard> {
    let (kv, _) = read_meta(path)?;
    let version = kv.get(&format!("{KEY_PREFIX}{SHARD_VERSION_KEY}"));
    if version.map(String::as_str) != Some(SHARD_VERSION.to_string().as_str()) {
        return Err(Error::artifact(
            path,
            format!(
                "shard version {} (this build reads {SHARD_VERSION})",
                version.map_or("missing", String::as_str)
            ),
        )
        .with_hint("redraw the shards with `gnno stage negatives --force`"));
    }
    let f = std::fs::File::open(path).at(path)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.with_batch_size(1 << 16).build())
        .map_err(|e| Error::artifact(path, format!("not a readable Parquet shard: {e}")))?;
    let want = schema();
    let mut s = Shard {
        offsets: vec![0],
        ..Shard::default()
    };
    for batch in reader {
        let batch = batch.map_err(|e| Error::artifact(path, format!("damaged shard data: {e}")))?;
        let got = batch.schema();
        for f in want.fields() {
            match got.field_with_name(f.name()) {
                Ok(g) if g.data_type() == f.data_type() => {}
                Ok(g) => {
                    return Err(Error::artifact(
                        path,
                        format!(
                            "column {:?} has type {}, expected {}",
                            f.name(),
                            g.data_type(),
                            f.data_type()
                        ),
                    )
                    .with_hint("this is not a shard written by this gnno version"))
                }
                Err(_) => {
                    return Err(
                        Error::artifact(path, format!("missing column {:?}", f.name()))
                            .with_hint("this is not a shard written by gnno"),
                    )
                }
            }
        }
        let c = |n: &str| {
            batch
                .column_by_name(n)
                .cloned()
                .ok_or_else(|| Error::artifact(path, format!("missing column {n:?}")))
        };
        s.instance.extend(
            c(COL_INSTANCE)?
                .as_primitive::<UInt64Type>()
                .values()
                .iter(),
        );
        s.user
            .extend(c(COL_USER)?.as_primitive::<UInt32Type>().values().iter());
        s.target
            .extend(c(COL_TARGET)?.as_primitive::<UInt32Type>().values().iter());
        let negs = c(COL_NEGATIVES)?;
        let negs = negs.as_list::<i32>();
        let ov = c(COL_OVERLAP)?;
        let ov = ov.as_list::<i32>();
        let lp = c(COL_LOG_PROB)?;
        let lp = lp.as_list::<i32>();
        for r in 0..negs.len() {
            let a = negs.value(r);
            let b = ov.value(r);
            let q = lp.value(r);
            if a.len() != b.len() || a.len() != q.len() {
                return Err(Error::artifact(
                    path,
                    format!(
                        "row {r}: {} negatives but {} overlaps and {} log-probabilities",
                        a.len(),
                        b.len(),
                        q.len()
                    ),
                ));
            }
            s.negatives
                .extend(a.as_primitive::<UInt32Type>().values().iter());
            s.overlap
                .extend(b.as_primitive::<Float32Type>().values().iter());
            s.log_prob
                .extend(q.as_primitive::<Float32Type>().values().iter());
            s.offsets.push(s.negatives.len());
        }
    }
    Ok(s)
}

/// Shard files of one epoch folder, in order.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .at(dir)?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    v.sort();
    Ok(v)
}

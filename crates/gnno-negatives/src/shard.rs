//! Writing shards: one Parquet file per (epoch, block of instances), with the
//! drawing parameters in the footer. The format itself lives in `gnno_core::shards`.

use arrow::array::{ArrayRef, Float32Array, ListArray, RecordBatch, UInt32Array, UInt64Array};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field};
use gnno_core::config::NegativesSettings;
use gnno_core::error::{parquet_write, Error, IoContext, Result};
pub use gnno_core::shards::*;
use gnno_core::{fsutil, ItemIdx};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Footer metadata of a shard: what drew it, and an id that a resumed run compares.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardMeta(pub BTreeMap<String, String>);

impl ShardMeta {
    pub fn new(
        cfg: &NegativesSettings,
        id: &crate::RunIdentity,
        epoch: u32,
        h: f64,
        shard: u64,
        first: u64,
        rows: u64,
    ) -> Self {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(format!("{KEY_PREFIX}{k}"), v);
        };
        put("format_version", gnno_core::FORMAT_VERSION.to_string());
        put(SHARD_VERSION_KEY, SHARD_VERSION.to_string());
        put(
            "sampler",
            serde_json::to_value(cfg.sampler)
                .map(|v| v.as_str().unwrap_or("").to_owned())
                .unwrap_or_default(),
        );
        put("temperature", cfg.temperature.to_string());
        put("hardness", h.to_string());
        put("n_hard", cfg.n_hard.to_string());
        put("exclude_history", cfg.exclude_history.to_string());
        put("seed", id.seed.to_string());
        put("epoch", epoch.to_string());
        put("shard", shard.to_string());
        put("first_instance", first.to_string());
        put("rows", rows.to_string());
        put("graph_fingerprint", id.graph_fingerprint.clone());
        put("ingest_fingerprint", id.ingest_fingerprint.clone());
        put("settings_hash", id.settings_hash.clone());
        Self(m)
    }
}

/// Rows of one shard being built.
#[derive(Debug, Default)]
pub struct ShardRows {
    instance: Vec<u64>,
    user: Vec<u32>,
    target: Vec<u32>,
    offsets: Vec<i32>,
    negs: Vec<u32>,
    overlap: Vec<f32>,
    log_prob: Vec<f32>,
    /// Negatives equal to their user's dev or test item (false negatives).
    leaked: u64,
}

impl ShardRows {
    pub fn with_capacity(rows: usize, per: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            instance: Vec::with_capacity(rows),
            user: Vec::with_capacity(rows),
            target: Vec::with_capacity(rows),
            offsets,
            negs: Vec::with_capacity(rows * per),
            overlap: Vec::with_capacity(rows * per),
            log_prob: Vec::with_capacity(rows * per),
            leaked: 0,
        }
    }
    /// One row; `held_out` are the user's evaluated dev and test items (0 = none),
    /// counted when drawn as negatives.
    pub fn push(
        &mut self,
        instance: u64,
        user: u32,
        target: ItemIdx,
        drawn: &[crate::Drawn],
        held_out: [ItemIdx; 2],
    ) {
        self.leaked += drawn
            .iter()
            .filter(|d| d.item != 0 && held_out.contains(&d.item))
            .count() as u64;
        self.instance.push(instance);
        self.user.push(user);
        self.target.push(target);
        for d in drawn {
            self.negs.push(d.item);
            self.overlap.push(d.overlap);
            self.log_prob.push(d.log_prob);
        }
        self.offsets
            .push(i32::try_from(self.negs.len()).unwrap_or(i32::MAX));
    }
    pub fn negatives(&self) -> usize {
        self.negs.len()
    }

    pub fn leaked(&self) -> u64 {
        self.leaked
    }

    fn into_batch(self) -> Result<RecordBatch> {
        let sch = schema();
        let list = |f: &Field, values: ArrayRef, offsets: &[i32]| -> Result<ArrayRef> {
            let DataType::List(inner) = f.data_type() else {
                return Err(Error::internal("list field"));
            };
            ListArray::try_new(
                inner.clone(),
                OffsetBuffer::new(offsets.to_vec().into()),
                values,
                None,
            )
            .map(|a| Arc::new(a) as ArrayRef)
            .map_err(|e| Error::internal(e.to_string()))
        };
        let negs = list(
            sch.field(3),
            Arc::new(UInt32Array::from(self.negs)),
            &self.offsets,
        )?;
        let ov = list(
            sch.field(4),
            Arc::new(Float32Array::from(self.overlap)),
            &self.offsets,
        )?;
        let lp = list(
            sch.field(5),
            Arc::new(Float32Array::from(self.log_prob)),
            &self.offsets,
        )?;
        RecordBatch::try_new(
            sch,
            vec![
                Arc::new(UInt64Array::from(self.instance)),
                Arc::new(UInt32Array::from(self.user)),
                Arc::new(UInt32Array::from(self.target)),
                negs,
                ov,
                lp,
            ],
        )
        .map_err(|e| Error::internal(e.to_string()))
    }
}

/// Write a shard atomically (temp file, fsync, rename); returns its size.
pub fn write(path: &Path, rows: ShardRows, meta: &ShardMeta, row_group_rows: usize) -> Result<u64> {
    let negatives = rows.negatives();
    let leaked = rows.leaked();
    let batch = rows.into_batch()?;
    let mut kv: Vec<parquet::file::metadata::KeyValue> = meta
        .0
        .iter()
        .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.clone(), v.clone()))
        .collect();
    kv.push(parquet::file::metadata::KeyValue::new(
        format!("{KEY_PREFIX}negatives"),
        negatives.to_string(),
    ));
    kv.push(parquet::file::metadata::KeyValue::new(
        format!("{KEY_PREFIX}leaked"),
        leaked.to_string(),
    ));
    // No dictionary where nearly every value differs (the instance ids, the
    // drawn ln q): it would only be built, then not pay for itself.
    let log_prob = ColumnPath::new(vec![COL_LOG_PROB.into(), "list".into(), "item".into()]);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(ColumnPath::from(COL_INSTANCE), false)
        .set_column_dictionary_enabled(log_prob, false)
        .set_max_row_group_row_count(Some(row_group_rows))
        .set_key_value_metadata(Some(kv))
        .set_created_by(format!("gnno {}", env!("CARGO_PKG_VERSION")))
        .build();
    fsutil::write_with(path, |f, tmp| {
        let mut w = ArrowWriter::try_new(f, batch.schema(), Some(props))
            .map_err(|e| parquet_write(tmp, e))?;
        w.write(&batch).map_err(|e| parquet_write(tmp, e))?;
        w.close().map_err(|e| parquet_write(tmp, e))?;
        Ok(())
    })?;
    std::fs::metadata(path).map(|m| m.len()).at(path)
}

/// When `path` is a finished shard drawn with exactly `meta`, its negative count
/// and how many of them are leaked (held-out) items.
pub fn complete_negatives(path: &Path, meta: &ShardMeta) -> Option<(u64, u64)> {
    let (kv, rows) = read_meta(path).ok()?;
    let same = meta.0.iter().all(|(k, v)| kv.get(k) == Some(v));
    let want_rows: u64 = meta.0.get(&format!("{KEY_PREFIX}rows"))?.parse().ok()?;
    if same && rows == want_rows {
        let count = |k: &str| kv.get(&format!("{KEY_PREFIX}{k}"))?.parse().ok();
        Some((count("negatives")?, count("leaked")?))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// The dictionary settings name real columns: a path that matched none (a list
    /// column's inner name changing, say) would silently keep the dictionary.
    #[test]
    fn only_instance_and_log_prob_are_written_without_a_dictionary() {
        let cfg = gnno_core::config::Config::defaults(Path::new("/x")).negatives;
        let id = crate::RunIdentity {
            seed: 1,
            settings_hash: "s".into(),
            graph_fingerprint: "g".into(),
            ingest_fingerprint: "i".into(),
        };
        let mut rows = ShardRows::with_capacity(3, 2);
        for i in 0..3u32 {
            let drawn: Vec<crate::Drawn> = (0..2u32)
                .map(|k| crate::Drawn {
                    item: 10 + k,
                    overlap: 0.5,
                    #[expect(clippy::cast_precision_loss, reason = "small ints")]
                    log_prob: -((i * 2 + k) as f32) - 1.0,
                })
                .collect();
            rows.push(u64::from(i), 7, 3, &drawn, [0, 0]);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("part.parquet");
        let meta = ShardMeta::new(&cfg, &id, 0, 0.1, 0, 0, 3);
        write(&path, rows, &meta, 1024).expect("write");
        let file = std::fs::File::open(&path).expect("open");
        let reader = SerializedFileReader::new(file).expect("parquet");
        let rg = reader.metadata().row_group(0);
        let mut seen = Vec::new();
        for c in rg.columns() {
            let dict = c.encodings().any(|e| e == Encoding::RLE_DICTIONARY);
            seen.push((c.column_path().string(), dict));
        }
        assert_eq!(
            seen,
            [
                ("instance".to_owned(), false),
                ("user".to_owned(), true),
                ("target".to_owned(), true),
                ("negatives.list.item".to_owned(), true),
                ("overlap.list.item".to_owned(), true),
                ("log_prob.list.item".to_owned(), false),
            ]
        );
    }
}

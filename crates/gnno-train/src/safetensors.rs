//! The safetensors container, written and read by hand for F32 tensors: an 8-byte
//! little-endian header length, a JSON header (`__metadata__`: string → string,
//! and per tensor `{dtype, shape, data_offsets}`), then the raw little-endian data.
//! By hand rather than through tch because tch neither writes nor returns the
//! `__metadata__` map, and the exported model carries what a loader needs there.
//! Tensors are laid out in name order and the header has sorted keys, so the same
//! tensors give the same bytes.

use gnno_core::error::{Error, IoContext, Result};
use gnno_core::fsutil;
use std::collections::BTreeMap;
use std::path::Path;

/// One F32 tensor: shape and row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct F32Tensor {
    pub shape: Vec<i64>,
    pub data: Vec<f32>,
}

/// A safetensors file: its metadata and its tensors by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SafeTensors {
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, F32Tensor>,
}

/// The largest header accepted on reading (the format's own limit is 100 MB).
const MAX_HEADER: u64 = 100 << 20;

impl SafeTensors {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut header = serde_json::Map::new();
        if !self.metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(&self.metadata).map_err(|e| Error::internal(e.to_string()))?,
            );
        }
        let mut offset = 0usize;
        for (name, t) in &self.tensors {
            let n = t.data.len() * 4;
            header.insert(
                name.clone(),
                serde_json::json!({
                    "dtype": "F32",
                    "shape": t.shape,
                    "data_offsets": [offset, offset + n],
                }),
            );
            offset += n;
        }
        let mut h = serde_json::to_vec(&header).map_err(|e| Error::internal(e.to_string()))?;
        // Pad with spaces so the data starts 8-byte aligned (allowed by the format).
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + h.len() + offset);
        out.extend_from_slice(&(h.len() as u64).to_le_bytes());
        out.extend_from_slice(&h);
        for t in self.tensors.values() {
            for v in &t.data {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        Ok(out)
    }

    /// Write atomically (temp file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        fsutil::write_atomic(path, &self.to_bytes()?)
    }

    /// Read and check a file: header, dtypes (F32 only), shapes against offsets.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).at(path)?;
        Self::parse(&bytes)
            .map_err(|m| Error::artifact(path, format!("not a usable safetensors file: {m}")))
    }

    fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let len_bytes: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or("shorter than its 8-byte header length")?;
        let n = u64::from_le_bytes(len_bytes);
        if n > MAX_HEADER || 8 + n > bytes.len() as u64 {
            return Err(format!("header length {n} does not fit the file"));
        }
        let n = usize::try_from(n).map_err(|e| e.to_string())?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| format!("header: {e}"))?;
        let data = &bytes[8 + n..];
        let mut out = Self::default();
        for (name, v) in header {
            if name == "__metadata__" {
                let m = v.as_object().ok_or("__metadata__ is not an object")?;
                for (k, s) in m {
                    let s = s
                        .as_str()
                        .ok_or_else(|| format!("metadata {k} is not a string"))?;
                    out.metadata.insert(k.clone(), s.to_owned());
                }
                continue;
            }
            let dtype = v.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
            if dtype != "F32" {
                return Err(format!("tensor {name} has dtype {dtype}, expected F32"));
            }
            let shape: Vec<i64> = v
                .get("shape")
                .and_then(|s| s.as_array())
                .ok_or_else(|| format!("tensor {name} has no shape"))?
                .iter()
                .map(|d| d.as_i64().filter(|&d| d >= 0))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("tensor {name} has a bad shape"))?;
            let offs: Vec<usize> = v
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
                        .collect()
                })
                .unwrap_or_default();
            let numel: i64 = shape.iter().product();
            let numel = usize::try_from(numel).map_err(|e| e.to_string())?;
            match offs[..] {
                [a, b] if a <= b && b <= data.len() && b - a == numel * 4 => {
                    let data = data[a..b]
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                    out.tensors.insert(name, F32Tensor { shape, data });
                }
                _ => {
                    return Err(format!(
                        "tensor {name}: data_offsets {offs:?} do not match shape {shape:?} \
                         in {} bytes of data",
                        data.len()
                    ))
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_metadata_and_aligned_data() {
        let mut st = SafeTensors::default();
        st.metadata.insert("dim".into(), "2".into());
        st.tensors.insert(
            "b".into(),
            F32Tensor {
                shape: vec![3],
                data: vec![1.0, -2.5, 3.25],
            },
        );
        st.tensors.insert(
            "a.weight".into(),
            F32Tensor {
                shape: vec![2, 2],
                data: vec![0.5, 0.0, -0.0, 7.0],
            },
        );
        let bytes = st.to_bytes().expect("bytes");
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        assert_eq!(n % 8, 0, "data starts 8-byte aligned");
        assert_eq!(bytes.len() as u64, 8 + n + 7 * 4);
        // Name order: a.weight's 4 values first.
        let first = 8 + usize::try_from(n).expect("small");
        assert_eq!(&bytes[first..first + 4], &0.5f32.to_le_bytes());
        assert_eq!(SafeTensors::parse(&bytes).expect("parses"), st);
        let mut bad = bytes.clone();
        bad.truncate(bytes.len() - 4);
        let e = SafeTensors::parse(&bad).expect_err("short data");
        assert!(e.contains("tensor b"), "{e}");
    }
}

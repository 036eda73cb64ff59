//! The graph store: the item transition graph and the overlap lists in sled, shared
//! by the graph stage (writer) and the negatives stage (reader).
//!
//! This crate owns the on-disk layout: the key encoding ([`keys`]), the value layout
//! with its checksum ([`codec`]) and the metadata that makes a foreign or outdated
//! store fail loudly. docs/FORMATS.md, "graph store", describes the same thing.

use gnno_core::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Version of the store layout; a store of another version is refused.
pub const STORE_VERSION: u32 = 1;

pub mod keys {
    //! The one place keys are encoded: item ids as big-endian u32, so that byte
    //! order is numeric order and a range scan visits items in id order.
    pub const TREE_WITG: &str = "witg";
    pub const TREE_OVERLAP: &str = "overlap";
    pub const TREE_META: &str = "meta";
    pub const META_VERSION: &[u8] = b"format_version";
    pub const META_INFO: &[u8] = b"info";

    pub fn item(i: u32) -> [u8; 4] {
        i.to_be_bytes()
    }

    pub fn decode_item(k: &[u8]) -> Option<u32> {
        Some(u32::from_be_bytes(k.try_into().ok()?))
    }
}

pub mod codec {
    //! Value layout: `n: u32 LE`, `ids: n × u32 LE`, `values: n × (f32|f64) LE`,
    //! `crc32: u32 LE` over everything before it.

    /// A scalar stored in a list value.
    pub trait Scalar: Copy {
        const SIZE: usize;
        fn put(self, out: &mut Vec<u8>);
        fn get(b: &[u8]) -> Self;
    }
    impl Scalar for f32 {
        const SIZE: usize = 4;
        fn put(self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_le_bytes());
        }
        fn get(b: &[u8]) -> Self {
            Self::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }
    impl Scalar for f64 {
        const SIZE: usize = 8;
        fn put(self, out: &mut Vec<u8>) {
            out.extend_from_slice(&self.to_le_bytes());
        }
        fn get(b: &[u8]) -> Self {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[..8]);
            Self::from_le_bytes(a)
        }
    }

    pub fn encode<T: Scalar>(ids: &[u32], vals: &[T]) -> Vec<u8> {
        debug_assert_eq!(ids.len(), vals.len());
        let mut out = Vec::with_capacity(8 + ids.len() * (4 + T::SIZE));
        out.extend_from_slice(&u32::try_from(ids.len()).unwrap_or(u32::MAX).to_le_bytes());
        for &i in ids {
            out.extend_from_slice(&i.to_le_bytes());
        }
        for &v in vals {
            v.put(&mut out);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decode and verify a value; `Err` names what is wrong.
    pub fn decode<T: Scalar>(b: &[u8]) -> Result<(Vec<u32>, Vec<T>), String> {
        if b.len() < 8 {
            return Err(format!("value of {} bytes is too short", b.len()));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != want {
            return Err("checksum mismatch".into());
        }
        let n = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
        if body.len() != 4 + n * (4 + T::SIZE) {
            return Err(format!("length {} does not match {n} entries", body.len()));
        }
        let ids = body[4..4 + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let vals = body[4 + 4 * n..]
            .chunks_exact(T::SIZE)
            .map(T::get)
            .collect();
        Ok((ids, vals))
    }
}

/// What the store records about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoreInfo {
    pub format_version: u32,
    pub n_items: u32,
    /// Fingerprint of the ingest output the graph was built from.
    pub input_fingerprint: String,
    /// Options that shaped the lists (hops, overlap kind, min_overlap, max_neighbors).
    pub options: serde_json::Value,
    /// Counts (edges, pairs) as in the graph report.
    pub counts: serde_json::Value,
    /// SHA-256 over every (tree, key, value) in key order: identical for identical content.
    pub content_fingerprint: String,
}

/// One item's list: neighbour ids and their values.
pub type List<T> = (Vec<u32>, Vec<T>);

/// Read access that the negatives stage and `gnno inspect` need; tests can plug in
/// an in-memory implementation.
pub trait GraphRead {
    fn info(&self) -> &StoreInfo;
    /// WITG neighbours of `item` with their final weights w'(item, j), by id.
    fn witg(&self, item: u32) -> Result<List<f64>>;
    /// Overlap list of `item`, sorted by J descending (ties by id).
    fn overlap(&self, item: u32) -> Result<List<f32>>;
    /// Every overlap list, item by item in id order.
    fn for_each_overlap(&self, f: &mut dyn FnMut(u32, List<f32>) -> Result<()>) -> Result<()>;
}

/// Open a sled database, waiting a little if a just-dropped handle in this process
/// still holds its file lock (sled's flusher thread lets go of it asynchronously).
fn open_sled(path: &Path, cache: u64, mode: sled::Mode) -> Result<sled::Db, sled::Error> {
    let mut tries = 0;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache)
            .mode(mode)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && tries < 100 =>
            {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// The two list trees of a store.
fn open_trees(db: &sled::Db, path: &Path) -> Result<(sled::Tree, sled::Tree)> {
    let witg = db
        .open_tree(keys::TREE_WITG)
        .map_err(|e| sled_err(path, &e))?;
    let overlap = db
        .open_tree(keys::TREE_OVERLAP)
        .map_err(|e| sled_err(path, &e))?;
    Ok((witg, overlap))
}

fn sled_err(path: &Path, e: &sled::Error) -> Error {
    Error::artifact(path, format!("graph store: {e}"))
}

/// Writes a fresh store; `finish` flushes it and returns its info.
pub struct StoreWriter {
    path: PathBuf,
    db: sled::Db,
    witg: sled::Tree,
    overlap: sled::Tree,
    hasher: Sha256,
}

impl StoreWriter {
    pub fn create(path: &Path) -> Result<Self> {
        if path.exists() {
            std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
        }
        let db = open_sled(path, 256 << 20, sled::Mode::HighThroughput)
            .map_err(|e| sled_err(path, &e))?;
        let (witg, overlap) = open_trees(&db, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            db,
            witg,
            overlap,
            hasher: Sha256::new(),
        })
    }

    fn put(&mut self, tree_name: &str, item: u32, value: &[u8]) -> Result<()> {
        let key = keys::item(item);
        self.hasher.update(tree_name.as_bytes());
        self.hasher.update(key);
        self.hasher.update(value);
        let tree = if tree_name == keys::TREE_WITG {
            &self.witg
        } else {
            &self.overlap
        };
        tree.insert(key, value)
            .map_err(|e| sled_err(&self.path, &e))?;
        Ok(())
    }

    /// Items must be written in increasing id order (the fingerprint depends on it).
    pub fn put_witg(&mut self, item: u32, ids: &[u32], w: &[f64]) -> Result<()> {
        self.put(keys::TREE_WITG, item, &codec::encode(ids, w))
    }

    pub fn put_overlap(&mut self, item: u32, ids: &[u32], j: &[f32]) -> Result<()> {
        self.put(keys::TREE_OVERLAP, item, &codec::encode(ids, j))
    }

    /// Write the metadata, flush everything to disk and close the store.
    pub fn finish(self, mut info: StoreInfo) -> Result<StoreInfo> {
        info.format_version = STORE_VERSION;
        info.content_fingerprint = gnno_core::fsutil::hex(&self.hasher.finalize());
        let meta = self
            .db
            .open_tree(keys::TREE_META)
            .map_err(|e| sled_err(&self.path, &e))?;
        let json = serde_json::to_vec(&info).map_err(|e| Error::internal(e.to_string()))?;
        meta.insert(keys::META_VERSION, &STORE_VERSION.to_be_bytes())
            .map_err(|e| sled_err(&self.path, &e))?;
        meta.insert(keys::META_INFO, json)
            .map_err(|e| sled_err(&self.path, &e))?;
        self.db.flush().map_err(|e| sled_err(&self.path, &e))?;
        drop(meta);
        drop(self.witg);
        drop(self.overlap);
        drop(self.db);
        Ok(info)
    }
}

/// A store opened for reading.
pub struct Store {
    path: PathBuf,
    info: StoreInfo,
    witg: sled::Tree,
    overlap: sled::Tree,
    _db: sled::Db,
}

impl Store {
    /// Open a store and check its version and, when given, the input fingerprint it
    /// must have been built from.
    pub fn open(path: &Path, expect_input: Option<&str>) -> Result<Self> {
        if !path.join("conf").exists() && !path.join("db").exists() {
            return Err(Error::artifact(path, "no graph store here")
                .with_hint("run `gnno stage graph` first"));
        }
        let db = open_sled(path, 64 << 20, sled::Mode::LowSpace).map_err(|e| sled_err(path, &e))?;
        let meta = db
            .open_tree(keys::TREE_META)
            .map_err(|e| sled_err(path, &e))?;
        let version = meta
            .get(keys::META_VERSION)
            .map_err(|e| sled_err(path, &e))?
            .and_then(|v| <[u8; 4]>::try_from(v.as_ref()).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(|| Error::artifact(path, "not a gnno graph store (no format version)"))?;
        if version != STORE_VERSION {
            return Err(Error::artifact(
                path,
                format!("store format version {version}, this build reads {STORE_VERSION}"),
            )
            .with_hint("rebuild it with `gnno stage graph --force`"));
        }
        let info: StoreInfo = meta
            .get(keys::META_INFO)
            .map_err(|e| sled_err(path, &e))?
            .and_then(|v| serde_json::from_slice(&v).ok())
            .ok_or_else(|| Error::artifact(path, "graph store metadata is missing or damaged"))?;
        if let Some(want) = expect_input {
            if info.input_fingerprint != want {
                return Err(Error::artifact(
                    path,
                    "the graph store was built from other ingest output",
                )
                .with_hint("rerun `gnno run --from graph`"));
            }
        }
        let (witg, overlap) = open_trees(&db, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            info,
            witg,
            overlap,
            _db: db,
        })
    }

    /// Open a private copy of the store. sled opens its files read-write (it may
    /// rewrite them and holds an exclusive lock), so readers that must never change a
    /// published store, nor wait for a run that has it open, read a snapshot. The
    /// copy is removed when the snapshot is dropped.
    pub fn open_snapshot(path: &Path, expect_input: Option<&str>) -> Result<Snapshot> {
        if !path.join("conf").exists() && !path.join("db").exists() {
            return Err(Error::artifact(path, "no graph store here")
                .with_hint("run `gnno stage graph` first"));
        }
        let tmp = std::env::temp_dir();
        sweep_snapshots(&tmp, SWEEP_MIN_AGE);
        let dir = tempfile::Builder::new()
            .prefix(SNAPSHOT_PREFIX)
            .tempdir_in(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let lock_path = dir.path().join(SNAPSHOT_LOCK);
        let lock = std::fs::File::create(&lock_path).map_err(|e| Error::io(&lock_path, e))?;
        // Where the file system has no locks, no sweep can take one either, so the
        // copy is safe unlocked: a failure here only means it is never swept.
        let _ = lock.try_lock();
        let copy = dir.path().join("store");
        copy_dir(path, &copy)?;
        let store = Self::open(&copy, expect_input).map_err(|e| match e {
            // Name the published store, not the private copy.
            Error::Artifact { message, hint, .. } => Error::Artifact {
                path: path.to_path_buf(),
                message,
                hint,
            },
            other => other,
        })?;
        Ok(Snapshot {
            store: Self {
                path: path.to_path_buf(),
                ..store
            },
            _lock: lock,
            _dir: dir,
        })
    }

    fn get<T: codec::Scalar>(&self, tree: &sled::Tree, name: &str, item: u32) -> Result<List<T>> {
        match tree
            .get(keys::item(item))
            .map_err(|e| sled_err(&self.path, &e))?
        {
            None => Ok((Vec::new(), Vec::new())),
            Some(v) => self.decode(name, item, &v),
        }
    }

    /// Decode a list and check every id against the item count the store records.
    fn decode<T: codec::Scalar>(&self, name: &str, item: u32, v: &[u8]) -> Result<List<T>> {
        let n = self.info.n_items;
        let bad =
            |m: String| Error::artifact(&self.path, format!("{name} value of item {item}: {m}"));
        if item == 0 || item > n {
            return Err(bad(format!("key outside the items 1..={n}")));
        }
        let list: List<T> = codec::decode(v).map_err(bad)?;
        if let Some(&j) = list.0.iter().find(|&&j| j == 0 || j > n) {
            return Err(bad(format!("neighbour id {j} outside the items 1..={n}")));
        }
        Ok(list)
    }
}

/// Snapshot folders are `<temp dir>/gnno-store-<random>`, each holding the copy
/// (`store/`) and a file its reader keeps locked while the snapshot lives.
const SNAPSHOT_PREFIX: &str = "gnno-store-";
const SNAPSHOT_LOCK: &str = "reader.lock";
/// A folder younger than this is never swept: its reader may be creating it.
const SWEEP_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// Remove the snapshot folders whose reader is gone: a killed reader (a crashed or
/// SIGKILLed stage) cannot remove its own, and a copy of a large graph store is
/// hundreds of MB. A folder goes only when it is older than `min_age` and its lock
/// file can be locked, that is when no process holds it, in any container sharing
/// the temp folder on this kernel (an OS file lock, released when its holder dies).
/// Folders without a lock file (older versions' snapshots) are left alone.
/// Best-effort: errors are ignored.
fn sweep_snapshots(tmp: &Path, min_age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(SNAPSHOT_PREFIX) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if !old {
            continue;
        }
        let Ok(lock) = std::fs::OpenOptions::new()
            .write(true)
            .open(e.path().join(SNAPSHOT_LOCK))
        else {
            continue;
        };
        if lock.try_lock().is_ok() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A store opened from a private copy (see [`Store::open_snapshot`]). Fields drop
/// in order: the store, then the lock, then the folder.
pub struct Snapshot {
    store: Store,
    _lock: std::fs::File,
    _dir: tempfile::TempDir,
}

impl Snapshot {
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl std::ops::Deref for Snapshot {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let ft = entry.file_type().map_err(|e| Error::io(&src, e))?;
        if ft.is_dir() {
            copy_dir(&src, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&src, e))?;
        }
    }
    Ok(())
}

impl GraphRead for Store {
    fn info(&self) -> &StoreInfo {
        &self.info
    }
    fn witg(&self, item: u32) -> Result<List<f64>> {
        self.get(&self.witg, keys::TREE_WITG, item)
    }
    fn overlap(&self, item: u32) -> Result<List<f32>> {
        self.get(&self.overlap, keys::TREE_OVERLAP, item)
    }
    fn for_each_overlap(&self, f: &mut dyn FnMut(u32, List<f32>) -> Result<()>) -> Result<()> {
        for kv in &self.overlap {
            let (k, v) = kv.map_err(|e| sled_err(&self.path, &e))?;
            let item = keys::decode_item(&k)
                .ok_or_else(|| Error::artifact(&self.path, "malformed overlap key"))?;
            let list = self.decode(keys::TREE_OVERLAP, item, &v)?;
            f(item, list)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_whose_reader_is_gone_are_swept_and_the_others_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let folder = |name: &str, lock_file: bool| {
            let d = tmp.path().join(name);
            std::fs::create_dir_all(d.join("store")).expect("mkdir");
            if lock_file {
                std::fs::File::create(d.join(SNAPSHOT_LOCK)).expect("lock file");
            }
            d
        };
        folder(&format!("{SNAPSHOT_PREFIX}gone"), true);
        let live = folder(&format!("{SNAPSHOT_PREFIX}live"), true);
        folder(&format!("{SNAPSHOT_PREFIX}old-style"), false);
        folder("other", true);
        // A live reader holds its lock (another open file, as another process's).
        let held = std::fs::File::open(live.join(SNAPSHOT_LOCK)).expect("open");
        held.try_lock().expect("locked");
        let left = || {
            let mut v: Vec<String> = std::fs::read_dir(tmp.path())
                .expect("list")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let all = left();
        // Too young to judge: nothing goes.
        sweep_snapshots(tmp.path(), std::time::Duration::from_secs(3600));
        assert_eq!(left(), all);
        sweep_snapshots(tmp.path(), std::time::Duration::ZERO);
        assert_eq!(
            left(),
            ["gnno-store-live", "gnno-store-old-style", "other"],
            "only the unheld snapshot goes"
        );
        drop(held);
        sweep_snapshots(tmp.path(), std::time::Duration::ZERO);
        assert_eq!(left(), ["gnno-store-old-style", "other"]);
    }

    #[test]
    fn codec_round_trips_and_detects_damage() {
        let v = codec::encode(&[3, 1, 2], &[1.0f32, 0.5, 0.25]);
        let (ids, j) = codec::decode::<f32>(&v).expect("decodes");
        assert_eq!(ids, vec![3, 1, 2]);
        assert_eq!(j, vec![1.0, 0.5, 0.25]);
        let mut bad = v.clone();
        bad[5] ^= 1;
        assert_eq!(
            codec::decode::<f32>(&bad).err().as_deref(),
            Some("checksum mismatch")
        );
    }

    #[test]
    fn keys_sort_numerically() {
        assert!(keys::item(2) < keys::item(256));
        assert_eq!(keys::decode_item(&keys::item(70_000)), Some(70_000));
    }

    #[test]
    fn store_round_trip_and_refuses_foreign_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("store");
        let mut w = StoreWriter::create(&p).expect("create");
        w.put_witg(1, &[2], &[0.5]).expect("put");
        w.put_overlap(1, &[1, 2], &[1.0, 0.4]).expect("put");
        w.put_overlap(2, &[2, 1], &[1.0, 0.4]).expect("put");
        let info = StoreInfo {
            format_version: 0,
            n_items: 2,
            input_fingerprint: "abc".into(),
            options: serde_json::json!({}),
            counts: serde_json::json!({}),
            content_fingerprint: String::new(),
        };
        let info = w.finish(info).expect("finish");
        assert_eq!(info.content_fingerprint.len(), 64);
        let s = Store::open(&p, Some("abc")).expect("open");
        assert_eq!(s.overlap(2).expect("get"), (vec![2, 1], vec![1.0, 0.4]));
        assert_eq!(s.witg(1).expect("get"), (vec![2], vec![0.5]));
        assert_eq!(s.overlap(9).expect("get").0.len(), 0);
        let mut seen = vec![];
        s.for_each_overlap(&mut |i, _| {
            seen.push(i);
            Ok(())
        })
        .expect("iterate");
        assert_eq!(seen, vec![1, 2]);
        drop(s);
        // A snapshot reads the same content and leaves the published files alone.
        let files = |d: &Path| {
            let mut v: Vec<(PathBuf, Vec<u8>)> = gnno_core::fsutil::list_files(d)
                .expect("list")
                .into_iter()
                .map(|f| (f.clone(), std::fs::read(d.join(&f)).expect("read")))
                .collect();
            v.sort();
            v
        };
        let before = files(&p);
        let copy = {
            let s = Store::open_snapshot(&p, None).expect("snapshot");
            assert_eq!(s.overlap(2).expect("get"), (vec![2, 1], vec![1.0, 0.4]));
            // Its reader holds the lock, so no sweep takes it while it lives.
            let copy = s._dir.path().to_path_buf();
            let other = std::fs::File::open(copy.join(SNAPSHOT_LOCK)).expect("open");
            assert!(other.try_lock().is_err(), "the snapshot's lock is held");
            // The published store stays openable while a snapshot is open.
            let s2 = Store::open_snapshot(&p, None).expect("second snapshot");
            assert_eq!(s2.info().n_items, 2);
            copy
        };
        assert!(!copy.exists(), "a dropped snapshot removes its copy");
        assert_eq!(
            files(&p),
            before,
            "a snapshot never writes to the published store"
        );
        let err = Store::open(&p, Some("other")).err().expect("refused");
        assert!(err.to_string().contains("other ingest output"), "{err}");
        // A store written by another layout version is refused too.
        {
            let db = open_sled(&p, 1 << 20, sled::Mode::LowSpace).expect("sled");
            let meta = db.open_tree(keys::TREE_META).expect("meta");
            meta.insert(keys::META_VERSION, &(STORE_VERSION + 1).to_be_bytes())
                .expect("insert");
            db.flush().expect("flush");
        }
        let err = Store::open(&p, None).err().expect("refused");
        assert!(
            err.to_string()
                .contains(&format!("store format version {}", STORE_VERSION + 1)),
            "{err}"
        );
        // Not a store at all.
        let err = Store::open(dir.path(), None).err().expect("refused");
        assert!(err.to_string().contains("no graph store here"), "{err}");
    }

    #[test]
    fn ids_outside_the_recorded_item_count_are_refused_naming_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("store");
        let mut w = StoreWriter::create(&p).expect("create");
        w.put_overlap(1, &[1, 3], &[1.0, 0.5]).expect("put");
        let info = StoreInfo {
            format_version: 0,
            n_items: 2,
            input_fingerprint: String::new(),
            options: serde_json::json!({}),
            counts: serde_json::json!({}),
            content_fingerprint: String::new(),
        };
        w.finish(info).expect("finish");
        let s = Store::open(&p, None).expect("open");
        let err = s.overlap(1).expect_err("id 3 > n_items 2");
        assert!(
            err.to_string().contains("store") && err.to_string().contains("neighbour id 3"),
            "{err}"
        );
        let err = s
            .for_each_overlap(&mut |_, _| Ok(()))
            .expect_err("refused while iterating too");
        assert!(err.to_string().contains("neighbour id 3"), "{err}");
    }
}

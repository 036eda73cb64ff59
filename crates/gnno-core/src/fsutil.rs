//! File helpers: atomic publish (write, fsync, rename, fsync dir) and checksums.

use crate::error::{IoContext, Result};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// SHA-256 of a byte slice, as hex.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// SHA-256 of a file's content, as hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).at(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// fsync a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// The temporary name a file is written under before it is published.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Write `data` to `path` atomically: temp file, fsync, rename, fsync directory.
/// On an error the temp file is removed (see [`write_with`]).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_with(path, |f, tmp| f.write_all(data).at(tmp))
}

/// Rename a finished, fsynced temp file onto its final name and fsync the directory.
pub fn publish(tmp: &Path, path: &Path) -> Result<()> {
    fs::rename(tmp, path).at(path)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsync a file that was written through another API (polars, parquet, sled).
pub fn sync_file(path: &Path) -> Result<()> {
    File::open(path).and_then(|f| f.sync_all()).at(path)
}

/// Create a directory and its parents.
pub fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).at(path)
}

/// Create a directory and its parents durably: every folder created here is fsynced
/// together with the folder holding its entry, so a crash cannot lose a folder whose
/// files were synced (a new file is durable only once its directory is). Returns
/// the folders it created, outermost first.
pub fn create_dir_durable(path: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = Some(path);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d.to_path_buf());
        p = d.parent();
    }
    missing.reverse();
    fs::create_dir_all(path).at(path)?;
    for d in &missing {
        sync_dir(d)?;
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(missing)
}

/// Write `path` through `write` (which gets a file open on a temp name next to it,
/// and that name for its errors), fsync, and publish by rename. On any error the
/// temp file is removed and a file already at `path` stays as it was.
pub fn write_with(path: &Path, write: impl FnOnce(&mut File, &Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = File::create(&tmp).at(&tmp)?;
        write(&mut f, &tmp)?;
        f.sync_all().at(&tmp)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    publish(&tmp, path)
}

/// Every regular file under `dir`, relative paths sorted, recursively.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            let p = entry.path();
            let ft = entry.file_type().at(&p)?;
            if ft.is_dir() {
                walk(base, &p, out)?;
            } else if ft.is_file() {
                out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// Size of every file under `dir`, summed.
pub fn dir_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for f in list_files(dir)? {
        let p = dir.join(f);
        total += fs::metadata(&p).at(&p)?.len();
    }
    Ok(total)
}

/// Remove temporary files (`*.tmp-<pid>`) a killed writer left under `dir`; returns
/// how many were removed. Only safe while holding the workdir lock.
pub fn remove_temp_files(dir: &Path) -> Result<usize> {
    let mut n = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for rel in list_files(dir)? {
        if rel
            .file_name()
            .is_some_and(|f| f.to_string_lossy().contains(".tmp-"))
        {
            let p = dir.join(rel);
            fs::remove_file(&p).at(&p)?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dir_durable_reports_the_folders_it_created() {
        let t = tempfile::tempdir().expect("tempdir");
        let deep = t.path().join("a/b/c");
        let made = create_dir_durable(&deep).expect("create");
        assert_eq!(
            made,
            vec![t.path().join("a"), t.path().join("a/b"), deep.clone()]
        );
        assert!(deep.is_dir());
        assert!(create_dir_durable(&deep).expect("again").is_empty());
    }

    #[test]
    fn write_with_publishes_only_a_complete_file() {
        let t = tempfile::tempdir().expect("tempdir");
        let p = t.path().join("x.parquet");
        write_with(&p, |f, tmp| f.write_all(b"old").at(tmp)).expect("write");
        let err = write_with(&p, |f, tmp| {
            f.write_all(b"half").at(tmp)?;
            Err(crate::Error::internal("writer failed"))
        });
        assert!(err.is_err());
        assert_eq!(
            fs::read(&p).expect("read"),
            b"old",
            "the old file is intact"
        );
        assert_eq!(
            list_files(t.path()).expect("list").len(),
            1,
            "no temp file left"
        );
        write_with(&p, |f, tmp| f.write_all(b"new").at(tmp)).expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"new");
    }
}

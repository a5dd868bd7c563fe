//! The data dir backend: modules by sha256 (`modules/<hex>.wasm`) and one file per config version
//! (`versions/<n>.json`). Every file is written whole to a temporary name, synced, then renamed
//! into place, so a crash mid-write leaves the previous state intact and never a torn file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{StoreError, VersionRecord, now_unix, sha256_hex};
use crate::overlay::Overlay;

pub struct DirStore {
    dir: PathBuf,
    versions: Vec<VersionRecord>,
}

// === impl DirStore ===

impl DirStore {
    /// Opens (creating if needed) the data dir and loads its versions.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        for sub in ["modules", "versions"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?;
            remove_leftovers(&path);
        }
        let folder = dir.join("versions");
        let entries = std::fs::read_dir(&folder).map_err(|source| StoreError::Io {
            path: folder.clone(),
            source,
        })?;
        let mut versions = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read(&path).map_err(|source| StoreError::Io {
                    path: path.clone(),
                    source,
                })?;
                let record: VersionRecord = serde_json::from_slice(&text)
                    .map_err(|source| StoreError::Corrupt { path, source })?;
                versions.push(record);
            }
        }
        versions.sort_by_key(|v| v.version);
        Ok(Self {
            dir: dir.to_owned(),
            versions,
        })
    }

    /// Stores a module; returns its sha256 in hex.
    pub fn put_module(&self, bytes: &[u8]) -> Result<String, StoreError> {
        let digest = sha256_hex(bytes);
        let path = self.module_path(&digest);
        // A file damaged on disk is repaired by uploading the module again.
        let intact = std::fs::read(&path).is_ok_and(|stored| sha256_hex(&stored) == digest);
        if !intact {
            write_atomically(&path, bytes)?;
        }
        Ok(digest)
    }

    /// A stored module, checked against its name; `None` if it was never uploaded.
    pub fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.module_path(&digest.to_ascii_lowercase());
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(digest) {
            return Err(StoreError::Tampered { path, actual });
        }
        Ok(Some(bytes))
    }

    pub fn current(&self) -> Option<&VersionRecord> {
        self.versions.last()
    }

    pub fn current_version(&self) -> u64 {
        self.current().map_or(0, |v| v.version)
    }

    pub fn version(&self, version: u64) -> Option<&VersionRecord> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// The digests of the stored modules.
    pub fn module_digests(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("modules")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_suffix(".wasm").map(str::to_owned)
            })
            .collect()
    }

    pub fn versions(&self) -> &[VersionRecord] {
        &self.versions
    }

    /// Persists `overlay` as the next version and makes it current.
    pub fn append(
        &mut self,
        overlay: Overlay,
        description: String,
    ) -> Result<VersionRecord, StoreError> {
        let record = VersionRecord {
            version: self.current_version() + 1,
            created_unix: now_unix(),
            description,
            overlay,
            written_by: String::new(),
        };
        let path = self
            .dir
            .join("versions")
            .join(format!("{:08}.json", record.version));
        let text = serde_json::to_vec_pretty(&record).map_err(|source| StoreError::Corrupt {
            path: path.clone(),
            source,
        })?;
        write_atomically(&path, &text)?;
        self.versions.push(record.clone());
        Ok(record)
    }

    fn module_path(&self, digest: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{digest}.wasm"))
    }
}

/// Removes the `.tmp` files of writes that never got renamed into place: the crash they
/// survived lost them.
fn remove_leftovers(folder: &Path) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().is_some_and(|e| e == "tmp") {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// Writes `bytes` to `path` so that `path` holds either its old contents or all of `bytes`,
/// whatever happens: a temporary file, synced, renamed over, and the folder synced.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_file(path, bytes, false)
}

/// As [`write_atomically`], for a secret: readable by its owner only from the first byte.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_file(path, bytes, true)
}

fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let staged = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(&staged).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&staged, path).map_err(io)?;
    if let Some(folder) = path.parent() {
        File::open(folder).and_then(|f| f.sync_all()).map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn versions_and_modules_survive_a_reopen() {
        let dir = temp_dir("reopen");
        let mut store = DirStore::open(&dir).unwrap();
        let digest = store.put_module(b"\0asm module").unwrap();
        assert_eq!(digest, sha256_hex(b"\0asm module"));
        store.append(Overlay::default(), "first".into()).unwrap();
        store.append(Overlay::default(), "second".into()).unwrap();

        let store = DirStore::open(&dir).unwrap();
        assert_eq!(store.current_version(), 2);
        assert_eq!(store.version(1).unwrap().description, "first");
        assert_eq!(store.module(&digest).unwrap().unwrap(), b"\0asm module");
        assert!(store.module(&"0".repeat(64)).unwrap().is_none());
    }

    #[test]
    fn a_write_cut_short_by_a_crash_is_ignored() {
        let dir = temp_dir("crash");
        let mut store = DirStore::open(&dir).unwrap();
        store.append(Overlay::default(), "kept".into()).unwrap();
        // What a crash between write and rename leaves behind.
        std::fs::write(
            dir.join("versions/00000002.tmp"),
            b"{\"version\": 2, \"crea",
        )
        .unwrap();
        let store = DirStore::open(&dir).unwrap();
        assert_eq!(store.current_version(), 1);
        assert!(!dir.join("versions/00000002.tmp").exists());
    }

    #[test]
    fn a_module_whose_bytes_changed_on_disk_is_refused() {
        let dir = temp_dir("tampered");
        let store = DirStore::open(&dir).unwrap();
        let digest = store.put_module(b"original").unwrap();
        std::fs::write(dir.join(format!("modules/{digest}.wasm")), b"changed").unwrap();
        let error = store.module(&digest).unwrap_err();
        assert!(matches!(error, StoreError::Tampered { .. }), "{error}");
        // Uploading it again repairs it.
        store.put_module(b"original").unwrap();
        assert_eq!(store.module(&digest).unwrap().unwrap(), b"original");
    }
}

//! Opening a stage's sled state. State is a cache of what the topics say: when the directory is
//! damaged (sled fails to open it, or its format marker is wrong), it is moved aside and the
//! stage starts empty and rebuilds by replaying its topics from the beginning. A damaged store is
//! never trusted blindly and never a crash loop.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// How long to wait for a sled lock that a just-closed handle of this process may still hold.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.to_string().contains("could not acquire lock"))
}

/// Opens a sled database, waiting briefly for its file lock: sled releases it from a
/// background thread after the last handle is dropped. A lock still held after that belongs to
/// another process, and is an error, never a sign of damage.
pub(crate) fn open_sled(path: &Path) -> std::result::Result<sled::Db, sled::Error> {
    // State holds coupon codes (bearer secrets) and profile ids: only the owner may read it.
    private_dir(path)?;
    let start = std::time::Instant::now();
    loop {
        match sled::open(path) {
            Err(e) if is_lock_error(&e) && start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Opens an existing store as it is, for a reader such as a report: waits for a closing
/// handle's lock like [`StateStore::open`], but never moves a damaged store aside (a reader must
/// not change what it reads); sled panicking on a damaged file is an error, not a crash.
pub fn open_unchanged(path: &Path) -> std::result::Result<sled::Db, Unopened> {
    match std::panic::catch_unwind(|| open_sled(path)) {
        Ok(Err(e)) if is_lock_error(&e) => Err(Unopened::Held),
        Ok(r) => r.map_err(|e| Unopened::Failed(e.to_string())),
        Err(_) => Err(Unopened::Failed(
            "sled panicked while opening the store".into(),
        )),
    }
}

/// Why [`open_unchanged`] could not open a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unopened {
    /// Another process holds it (a running `tillbridge run`): sled allows one process at a time.
    Held,
    /// It could not be read (damaged, or not a sled store).
    Failed(String),
}

/// Creates `path` (and its parents) and makes it readable by its owner only (0700), also when
/// it existed with wider permissions.
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path`, created or truncated, readable by its owner only (0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    // A file that existed keeps its mode through `open`: narrow it.
    #[cfg(unix)]
    f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The key under which a state keeps its next offset of `topic`'s `partition`, after `prefix`.
pub fn position_key(prefix: &[u8], topic: &str, partition: i32) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(format!("{topic}/{partition}").as_bytes());
    k
}

/// The topic and partition of a [`position_key`] (without its prefix), when it is one.
pub fn parse_position_key(rest: &[u8]) -> Option<(String, i32)> {
    let key = std::str::from_utf8(rest).ok()?;
    let (topic, partition) = key.rsplit_once('/')?;
    Some((topic.to_owned(), partition.parse().ok()?))
}

/// The marker of this version's state layout.
const FORMAT_KEY: &[u8] = b"__tillbridge_format";

/// A stage's state store.
#[derive(Clone, Debug)]
pub struct StateStore {
    db: sled::Db,
    path: PathBuf,
    rebuilt: bool,
    fresh: bool,
}

impl StateStore {
    /// Opens the store at `path` for state layout `format`. When the store is damaged or of
    /// another layout, it is moved to `<path>.damaged-<time>` and a fresh one is created;
    /// [`StateStore::rebuilt`] then tells the caller to replay its topics from the start.
    pub fn open(path: &Path, format: &str) -> Result<Self> {
        let existed = path.exists();
        // Another process holding the store is an operator error, not damage.
        if existed {
            if let Err(e) = std::panic::catch_unwind(|| open_sled(path).map(drop)).unwrap_or(Ok(()))
            {
                if is_lock_error(&e) {
                    return Err(Error::storage(path.display().to_string(), e));
                }
            }
        }
        match Self::try_open(path, format, existed) {
            Ok(db) => Ok(StateStore {
                db,
                path: path.to_owned(),
                rebuilt: false,
                fresh: !existed,
            }),
            Err(reason) => {
                let aside = path.with_extension(format!(
                    "damaged-{}",
                    chrono::Utc::now().format("%Y%m%dT%H%M%S%.3f")
                ));
                tracing::error!(path = %path.display(), aside = %aside.display(), %reason,
                    "state store damaged; moved aside, rebuilding from the topics");
                std::fs::rename(path, &aside).map_err(|e| {
                    Error::Corrupt(format!(
                        "{}: {reason}; moving it aside failed: {e}",
                        path.display()
                    ))
                })?;
                let db = Self::try_open(path, format, false).map_err(Error::Corrupt)?;
                Ok(StateStore {
                    db,
                    path: path.to_owned(),
                    rebuilt: true,
                    fresh: true,
                })
            }
        }
    }

    fn try_open(path: &Path, format: &str, existed: bool) -> std::result::Result<sled::Db, String> {
        // sled 0.34 can panic on some damaged files; a panic here must not become a crash loop.
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_sled(path)));
        let db = match opened {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => return Err("sled panicked while opening the store".into()),
        };
        match db.get(FORMAT_KEY).map_err(|e| e.to_string())? {
            Some(v) if v.as_ref() == format.as_bytes() => Ok(db),
            Some(v) => Err(format!(
                "state format {:?}, expected {format:?}",
                String::from_utf8_lossy(&v)
            )),
            None if existed && !db.is_empty() => Err("state has no format marker".into()),
            None => {
                db.insert(FORMAT_KEY, format.as_bytes())
                    .map_err(|e| e.to_string())?;
                db.flush().map_err(|e| e.to_string())?;
                Ok(db)
            }
        }
    }

    /// Whether the store was found damaged and recreated empty.
    pub fn rebuilt(&self) -> bool {
        self.rebuilt
    }

    /// Whether the store starts empty (created now, or rebuilt): the stage must then read its
    /// topics from the beginning, whatever positions its consumer group had stored, because
    /// the state those positions reflected is gone.
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    pub fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.db.open_tree(name).map_err(|e| self.err(e))
    }

    /// Flushes every write so far to disk.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    pub fn err(&self, e: sled::Error) -> Error {
        Error::storage(self.path.display().to_string(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_held_by_another_handle_is_an_error_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let held = StateStore::open(&p, "v1").unwrap();
        held.db().insert(b"k", b"v").unwrap();
        held.db().flush().unwrap();
        assert!(matches!(
            StateStore::open(&p, "v1"),
            Err(Error::Storage { .. })
        ));
        drop(held);
        let s = StateStore::open(&p, "v1").unwrap();
        assert!(!s.rebuilt(), "the store was kept");
        assert!(s.db().get(b"k").unwrap().is_some());
    }

    #[test]
    fn a_damaged_store_is_moved_aside_and_recreated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        {
            let s = StateStore::open(&p, "v1").unwrap();
            assert!(!s.rebuilt());
            assert!(s.fresh());
            s.db().insert(b"k", b"v").unwrap();
            s.db().flush().unwrap();
        }
        // Same format: state kept.
        {
            let s = StateStore::open(&p, "v1").unwrap();
            assert!(!s.rebuilt());
            assert!(!s.fresh());
            assert!(s.db().get(b"k").unwrap().is_some());
        }
        // Another format: rebuilt.
        {
            let s = StateStore::open(&p, "v2").unwrap();
            assert!(s.rebuilt());
            assert!(s.db().get(b"k").unwrap().is_none());
        }
        // Garbage in place of sled's files: rebuilt, not a crash.
        for entry in std::fs::read_dir(&p).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::write(&path, b"garbage garbage garbage").unwrap();
            }
        }
        let s = StateStore::open(&p, "v2").unwrap();
        assert!(s.rebuilt());
    }
}

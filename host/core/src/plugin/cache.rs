//! The on-disk cache of compiled plugins. A cache entry is native code the
//! host will run, so it is trusted only if it proves it was written by
//! this installation: each entry carries an HMAC-SHA256, under a key kept
//! outside the cache directory, of its name (the plugin's content hash and
//! the engine's configuration) and its code. An entry that does not verify
//! (replaced, renamed, damaged, or of an older layout) is a miss: the plugin
//! is compiled again and the entry overwritten. The directory is created
//! private (0700), and one that others could write to, or that belongs to
//! another user, is refused.
//!
//! Entry layout, version 1: the 8 bytes `WEIRMAC1`, the 32-byte HMAC, then
//! what `Component::serialize` wrote.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::Error;

/// The first bytes of a signed entry.
const MAGIC: &[u8; 8] = b"WEIRMAC1";
const MAC_LEN: usize = 32;
const KEY_LEN: usize = 32;

/// Where the cache key lives by default: `$XDG_CONFIG_HOME/weir/cache.key`,
/// else `~/.config/weir/cache.key`; `None` without either variable.
pub fn default_key_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("weir").join("cache.key"));
    }
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty())?;
    Some(
        Path::new(&home)
            .join(".config")
            .join("weir")
            .join("cache.key"),
    )
}

/// An opened cache: a checked directory and the key that signs entries.
pub(crate) struct Cache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
}

fn refuse(path: &Path, message: impl Into<String>) -> Error {
    Error::PluginCache {
        path: path.to_owned(),
        message: message.into(),
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses `path` unless it belongs to this user and no one else may write
/// to it (or, with `private`, read it).
fn check_owned(path: &Path, meta: &std::fs::Metadata, private: bool) -> Result<(), Error> {
    if meta.uid() != euid() {
        return Err(refuse(
            path,
            format!(
                "belongs to user id {}, not to this user ({}): another user could replace \
                 the native code Weir runs",
                meta.uid(),
                euid()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    let forbidden = if private { 0o077 } else { 0o022 };
    if mode & forbidden != 0 {
        return Err(refuse(
            path,
            format!(
                "has mode {mode:03o}: {} (chmod {} it)",
                if private {
                    "others may read it"
                } else {
                    "others may write to it and replace the native code Weir runs"
                },
                if private { "600" } else { "700" }
            ),
        ));
    }
    Ok(())
}

impl Cache {
    /// Opens (creating them if needed) the cache directory `dir` and the
    /// key at `key_path`.
    ///
    /// # Errors
    /// [`Error::PluginCache`] if either cannot be created or read, is not
    /// of the right type, belongs to another user, or is open to others.
    pub(crate) fn open(dir: &Path, key_path: &Path) -> Result<Self, Error> {
        if key_path.starts_with(dir) {
            return Err(refuse(
                key_path,
                "the cache key must not live inside the cache directory",
            ));
        }
        match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| refuse(dir, format!("cannot create the cache directory: {e}")))?;
            }
            Err(e) => return Err(refuse(dir, format!("cannot read: {e}"))),
            Ok(m) if !m.is_dir() => return Err(refuse(dir, "is not a directory")),
            Ok(_) => {}
        }
        let meta = std::fs::metadata(dir).map_err(|e| refuse(dir, format!("cannot read: {e}")))?;
        check_owned(dir, &meta, false)?;
        Ok(Self {
            dir: dir.to_owned(),
            key: load_or_create_key(key_path)?,
        })
    }

    /// Where the entry `name` lives.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn mac(&self, name: &str, code: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("invariant: HMAC takes any key size");
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name.as_bytes());
        mac.update(code);
        mac
    }

    /// The compiled code of entry `name`, if it is there and verifies.
    /// A missing entry is `Ok(None)`; one that does not verify is
    /// `Err(why)`, which the caller treats as a miss.
    pub(crate) fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        let path = self.path(name);
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        if bytes.len() < MAGIC.len() + MAC_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a signed entry (damaged, or of an older layout)".into());
        }
        let tag = &bytes[MAGIC.len()..MAGIC.len() + MAC_LEN];
        let code = &bytes[MAGIC.len() + MAC_LEN..];
        self.mac(name, code)
            .verify_slice(tag)
            .map_err(|_| "its signature does not match: it was not written for this plugin by this installation".to_owned())?;
        bytes.drain(..MAGIC.len() + MAC_LEN);
        Ok(Some(bytes))
    }

    /// Writes entry `name` holding `code`, signed, atomically.
    pub(crate) fn write(&self, name: &str, code: &[u8]) -> std::io::Result<()> {
        let tag = self.mac(name, code).finalize().into_bytes();
        let file = self.path(name);
        let tmp = file.with_extension(format!("tmp{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&tag)?;
        f.write_all(code)?;
        drop(f);
        std::fs::rename(&tmp, &file)
    }

    /// The directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Reads the installation's cache key, creating it (0600, in a 0700
/// directory) on first use. Creation never overwrites a key another
/// process created meanwhile.
fn load_or_create_key(path: &Path) -> Result<[u8; KEY_LEN], Error> {
    let read = |path: &Path| -> Result<[u8; KEY_LEN], Error> {
        let meta = std::fs::symlink_metadata(path)
            .map_err(|e| refuse(path, format!("cannot read the cache key: {e}")))?;
        if !meta.is_file() {
            return Err(refuse(path, "the cache key is not a regular file"));
        }
        check_owned(path, &meta, true)?;
        let bytes = std::fs::read(path)
            .map_err(|e| refuse(path, format!("cannot read the cache key: {e}")))?;
        bytes.try_into().map_err(|b: Vec<u8>| {
            refuse(
                path,
                format!(
                    "the cache key holds {} bytes, not {KEY_LEN}: delete it to make a new one \
                     (compiled plugins are then compiled again)",
                    b.len()
                ),
            )
        })
    };
    if std::fs::symlink_metadata(path).is_ok() {
        return read(path);
    }
    let parent = path
        .parent()
        .ok_or_else(|| refuse(path, "the cache key needs a directory"))?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(|e| {
            refuse(
                parent,
                format!("cannot create the cache key's directory: {e}"),
            )
        })?;
    let mut key = [0u8; KEY_LEN];
    rand::fill(&mut key);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = write_key(&tmp, path, &key);
    let _ = std::fs::remove_file(&tmp);
    written.map_err(|e| refuse(path, format!("cannot create the cache key: {e}")))?;
    read(path)
}

/// Writes `key` to `tmp` (0600), then links it to `path` unless a key is
/// there already: another process that made one first wins.
fn write_key(tmp: &Path, path: &Path, key: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    f.write_all(key)?;
    f.sync_all()?;
    match std::fs::hard_link(tmp, path) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_verify_only_under_their_own_name_and_key() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let key = root.path().join("config/weir/cache.key");
        let cache = Cache::open(&dir, &key).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(key.parent().unwrap()), 0o700);

        cache.write("a.cwasm", b"code of a").unwrap();
        cache.write("b.cwasm", b"code of b").unwrap();
        assert_eq!(cache.read("a.cwasm").unwrap().unwrap(), b"code of a");
        assert_eq!(cache.read("none.cwasm"), Ok(None));

        // B's entry put in A's place is refused: the name is signed too.
        std::fs::copy(cache.path("b.cwasm"), cache.path("a.cwasm")).unwrap();
        let why = cache.read("a.cwasm").unwrap_err();
        assert!(why.contains("signature does not match"), "{why}");
        // So is an entry with its code changed, or unsigned.
        let mut bytes = std::fs::read(cache.path("b.cwasm")).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(cache.path("b.cwasm"), &bytes).unwrap();
        assert!(cache.read("b.cwasm").is_err());
        std::fs::write(cache.path("b.cwasm"), b"code of b").unwrap();
        assert!(
            cache
                .read("b.cwasm")
                .unwrap_err()
                .contains("not a signed entry")
        );

        // Another key (another installation) verifies nothing of this one.
        cache.write("a.cwasm", b"code of a").unwrap();
        let other = Cache::open(&dir, &root.path().join("other.key")).unwrap();
        assert!(other.read("a.cwasm").is_err());
        // The same key, opened again, does.
        let again = Cache::open(&dir, &key).unwrap();
        assert_eq!(again.read("a.cwasm").unwrap().unwrap(), b"code of a");
    }

    #[test]
    fn a_cache_open_to_others_or_a_readable_key_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("cache");
        let key = root.path().join("cache.key");
        Cache::open(&dir, &key).unwrap();

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Cache::open(&dir, &key).err().unwrap();
        assert!(
            e.to_string()
                .contains("has mode 777: others may write to it"),
            "{e}"
        );
        assert_eq!(e.kind(), crate::error::ErrorKind::User);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        Cache::open(&dir, &key).unwrap();

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Cache::open(&dir, &key).err().unwrap();
        assert!(e.to_string().contains("others may read it"), "{e}");

        let file = root.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = Cache::open(&file, &key).err().unwrap();
        assert!(e.to_string().contains("is not a directory"), "{e}");
        let e = Cache::open(&dir, &dir.join("cache.key")).err().unwrap();
        assert!(e.to_string().contains("must not live inside"), "{e}");

        // Another user's directory (only root can give one away).
        if euid() == 0 {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::os::unix::fs::chown(&dir, Some(12345), None).unwrap();
            let e = Cache::open(&dir, &key).err().unwrap();
            assert!(e.to_string().contains("belongs to user id 12345"), "{e}");
        }
    }
}

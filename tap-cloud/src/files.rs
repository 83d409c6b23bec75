//! Writing files that hold secrets (private keys, access keys, captured frames) so that
//! nobody else can read them, whatever was at their path before.

use std::{
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

/// Mode of a file only its owner may read.
pub const PRIVATE: u32 = 0o600;

/// Puts `contents` at `path` as a new file of `mode` (less the umask). The bytes go to a
/// new file beside it (created exclusively, so no symlink is followed and no file someone
/// else prepared is reused), are synced, and the file is renamed over `path`. So a
/// symlink at `path` is replaced, its target untouched; an earlier file's wider mode is
/// not kept; and a reader sees the old file or the whole new one. Anything at `path` but
/// a regular file or a symlink (a directory, a device such as /dev/null, a FIFO) is left
/// alone with an error.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_file() || m.is_symlink() => {}
        Ok(_) => bail!("{} exists and is not a regular file: give the path of a file to write", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("write {}", path.display())),
    }
    let Some(name) = path.file_name() else { bail!("write {}: not a file name", path.display()) };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness for a file name: {e}"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", crate::keys::hex(&nonce)));
    let tmp: PathBuf = dir.join(tmp_name);
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("write {} (through {})", path.display(), tmp.display()));
    }
    // The rename is durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("sync directory {} after writing {}", dir.display(), path.display()))
}

/// [`replace`] with a file only its owner may read.
pub fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    replace(path, contents, PRIVATE)
}

/// Tightens an existing file to owner-only access when its mode lets others in, and says
/// so: a file created by an earlier version, or by hand under a loose umask. Absent is
/// fine. Returns whether it changed the mode.
pub fn restrict_existing(path: &Path) -> anyhow::Result<bool> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("read the mode of {}", path.display())),
    };
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_file() || mode & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))
        .with_context(|| format!("restrict {} to its owner (mode {mode:o})", path.display()))?;
    log::warn!("{} was open to others (mode {mode:o}); now {:o}", path.display(), mode & 0o700);
    Ok(true)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// The permission bits of `path` (not following a symlink).
    pub(crate) fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
    }

    pub(crate) use tap_testkit::TempDir;

    #[test]
    fn a_secret_replaces_a_readable_file_and_a_symlink_without_following_it() {
        let tmp = TempDir::new("files-replace");
        let key = tmp.0.join("k");
        std::fs::write(&key, "old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&key, b"secret").unwrap();
        assert_eq!((std::fs::read_to_string(&key).unwrap().as_str(), mode(&key)), ("secret", 0o600));

        let target = tmp.0.join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let link = tmp.0.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_private(&link, b"secret").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(mode(&link), 0o600);

        let err = write_private(&tmp.0, b"x").unwrap_err().to_string();
        assert!(err.contains("is not a regular file"), "{err}");
        let err = write_private(Path::new("/dev/null"), b"x").unwrap_err().to_string();
        assert!(err.contains("/dev/null exists and is not a regular file"), "{err}");
        // Nothing left behind beside them.
        let mut names: Vec<_> = std::fs::read_dir(&tmp.0).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["elsewhere", "k", "link"]);
    }

    #[test]
    fn an_existing_readable_file_is_restricted_to_its_owner() {
        let tmp = TempDir::new("files-restrict");
        let f = tmp.0.join("db");
        assert!(!restrict_existing(&f).unwrap(), "absent is fine");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(restrict_existing(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        assert!(!restrict_existing(&f).unwrap());
    }
}

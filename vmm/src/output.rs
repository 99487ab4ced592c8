//! Report files (`--json`, `--svg`, `--trace`): checked before the VM
//! boots, so that a bad path costs nothing, and written to a temporary
//! file in the same directory that is then renamed over the target, so a
//! full disk or a crash never leaves a truncated file (and never destroys
//! the previous one). `-` is standard output.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why an output path cannot be used (found before the run: exit 2).
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The directory the file would go in does not exist.
    #[error("{option} {path}: the directory {dir} does not exist")]
    NoDirectory {
        /// The option (`--json`, ...).
        option: &'static str,
        /// The path given.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The path is a directory.
    #[error("{option} {path}: is a directory, give a file name")]
    IsDirectory {
        /// The option.
        option: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A file cannot be created there, or the existing one cannot be written.
    #[error("{option} {path}: cannot write there: {source}")]
    NotWritable {
        /// The option.
        option: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `-` (standard output) where only one output can use it.
    #[error("{0}")]
    Stdout(String),
}

/// Where one output goes, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output (`-`).
    Stdout,
    /// A regular file (or one still to be created): written by temp file
    /// and rename. `path` is what the user gave (for messages), `real` the
    /// file it resolves to (a symlink's target, so the link survives).
    File {
        /// As given.
        path: PathBuf,
        /// Resolved.
        real: PathBuf,
    },
    /// An existing non-regular file (a device, a FIFO): written in place,
    /// since renaming over it would replace the device.
    Special(PathBuf),
}

impl Target {
    /// The path as the user gave it (`-` for stdout).
    pub fn display(&self) -> String {
        match self {
            Target::Stdout => "-".into(),
            Target::File { path, .. } | Target::Special(path) => path.display().to_string(),
        }
    }
}

/// Checks that `path` can take the output of `option`: its directory
/// exists, it is not a directory, and a file can be created beside it
/// (the temporary file the write needs) or, for a device, opened for
/// writing. Nothing is left behind.
pub fn check(option: &'static str, path: &Path) -> Result<Target, OutputError> {
    if path.as_os_str() == "-" {
        return Ok(Target::Stdout);
    }
    let not_writable = |source| OutputError::NotWritable {
        option,
        path: path.to_path_buf(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            return Err(OutputError::IsDirectory {
                option,
                path: path.to_path_buf(),
            })
        }
        Ok(m) if !m.is_file() => {
            OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(not_writable)?;
            return Ok(Target::Special(path.to_path_buf()));
        }
        _ => {}
    }
    // An existing file (or symlink to one) is replaced where it really is.
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = parent(&real);
    if !dir.is_dir() {
        return Err(OutputError::NoDirectory {
            option,
            path: path.to_path_buf(),
            dir,
        });
    }
    tempfile::Builder::new()
        .prefix(".ipivirt-check")
        .tempfile_in(&dir)
        .map_err(not_writable)?;
    if real.exists() {
        // The rename would work even on a read-only file; refuse what the
        // user could not write by hand either.
        OpenOptions::new()
            .append(true)
            .open(&real)
            .map_err(not_writable)?;
    }
    Ok(Target::File {
        path: path.to_path_buf(),
        real,
    })
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Writes `bytes` to `target`: a file through a temporary file in its
/// directory renamed over it (mode 0644 for a new file, the old mode
/// otherwise), a device or stdout directly.
pub fn write(target: &Target, bytes: &[u8]) -> std::io::Result<()> {
    write_with(target, |w| w.write_all(bytes))
}

/// Like [`write()`], with the content produced by `fill`.
pub fn write_with(
    target: &Target,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    match target {
        Target::Stdout => {
            let mut out = std::io::stdout().lock();
            fill(&mut out)?;
            out.flush()
        }
        Target::Special(path) => {
            let mut f = std::io::BufWriter::new(OpenOptions::new().write(true).open(path)?);
            fill(&mut f)?;
            f.flush()
        }
        Target::File { real, .. } => {
            let mode = std::fs::metadata(real).map_or(0o644, |m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o7777
            });
            let tmp = tempfile::Builder::new()
                .prefix(".ipivirt-")
                .tempfile_in(parent(real))?;
            let mut w = std::io::BufWriter::new(tmp);
            fill(&mut w)?;
            let tmp = w.into_inner().map_err(|e| e.into_error())?;
            {
                use std::os::unix::fs::PermissionsExt;
                tmp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(mode))?;
            }
            tmp.as_file().sync_all()?;
            tmp.persist(real).map_err(|e| e.error)?;
            Ok(())
        }
    }
}

/// Removes a stale file at `target` (a regular file only). Returns whether
/// there was one.
pub fn remove_stale(target: &Target) -> std::io::Result<bool> {
    match target {
        Target::File { real, .. } => match std::fs::remove_file(real) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        },
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_refuses_missing_dir_directory_and_unwritable() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/r.json");
        assert!(matches!(
            check("--json", &missing),
            Err(OutputError::NoDirectory { .. })
        ));
        assert!(matches!(
            check("--json", dir.path()),
            Err(OutputError::IsDirectory { .. })
        ));
        assert!(matches!(
            check("--json", Path::new("/proc/version")),
            Err(OutputError::NotWritable { .. })
        ));
        assert_eq!(check("--json", Path::new("-")).unwrap(), Target::Stdout);
        // Nothing is left behind by the check.
        let t = check("--json", &dir.path().join("r.json")).unwrap();
        assert!(matches!(t, Target::File { .. }));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn test_write_replaces_atomically_and_keeps_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        let t = check("--json", &path).unwrap();
        write(&t, b"first").unwrap();
        let failed = write_with(&t, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        write(&t, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert!(remove_stale(&t).unwrap());
        assert!(!remove_stale(&t).unwrap());
    }
}

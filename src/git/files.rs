//! Reading the files of a config repository into memory for [`desired::load`].
//!
//! Config repositories are small; a cap keeps a mistaken repository (a
//! committed disk image, say) from exhausting memory.
//!
//! [`desired::load`]: linkops_reconcilers::desired::load

use std::path::{Path, PathBuf};

use linkops_reconcilers::desired::RepoFiles;

/// Most bytes of files read from one revision.
pub const MAX_REPO_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the repository holds more than {limit} bytes of files; LinkOps reads config repositories whole"
    )]
    TooLarge { path: PathBuf, limit: u64 },
}

/// Reads every regular file below `root` (skipping `.git`), keyed by its
/// `/`-separated path relative to `root`.
pub fn read_dir(root: &Path) -> Result<RepoFiles, Error> {
    let mut files = RepoFiles::new();
    let mut total = 0u64;
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        let io = |source| Error::Io {
            path: dir.clone(),
            source,
        };
        for entry in std::fs::read_dir(&dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let path = entry.path();
            let kind = entry.file_type().map_err(io)?;
            if entry.file_name() == ".git" {
                continue;
            }
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() {
                let bytes = std::fs::read(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                total += bytes.len() as u64;
                if total > MAX_REPO_BYTES {
                    return Err(Error::TooLarge {
                        path: root.to_owned(),
                        limit: MAX_REPO_BYTES,
                    });
                }
                let relative = path.strip_prefix(root).expect("walked below root");
                let key = relative
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                files.insert(key, bytes);
            }
        }
    }
    Ok(files)
}

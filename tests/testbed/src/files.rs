//! Files as the daemon wants them: directories only their owner enters,
//! secrets only their owner reads.

use std::path::Path;

/// A temporary directory only its owner may enter, as systemd makes a data dir
/// (`StateDirectory`, 0700): the daemon refuses one that others can read.
pub fn private_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .unwrap()
}

/// Writes a secret file (0600) in a directory only its owner enters.
pub fn write_private(path: &Path, secret: &str) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = path.parent().unwrap();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, secret.as_bytes()))
        .unwrap();
}

/// Copies the files of `from` into `to`, a directory only its owner enters,
/// each keeping its mode (a key stays 0600): as an operator copies a
/// replica's keys to another.
pub fn copy_private(from: &Path, to: &Path) {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(to)
        .unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

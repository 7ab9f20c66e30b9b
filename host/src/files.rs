//! Durable file writes.

use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` whole or not at all: into a temporary file of
/// its own beside it (two writers of one content-addressed file may race),
/// synced, then renamed over `path`.
///
/// # Errors
///
/// I/O errors.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{:016x}.tmp", rand::random::<u64>()));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(tmp, path)
}

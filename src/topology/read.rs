//! Reading small kernel files (sysfs, procfs, cgroupfs) defensively.

use std::io::{self, Read};
use std::path::Path;

/// Kernel pseudo-files we read are tiny, except `mountinfo` on hosts with
/// many mounts. Anything larger than this is cut off rather than slurped.
const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a file as text. A missing file is `Ok(None)`; invalid UTF-8 is
/// replaced (it then fails to parse, like any other malformed content).
pub(crate) fn read_text(path: &Path) -> io::Result<Option<String>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES).read_to_end(&mut bytes)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Like [`read_text`], but logs and folds every failure into `None`:
/// missing files at `debug`, unreadable ones at `warn`.
pub(crate) fn read_or_log(path: &Path, what: &str) -> Option<String> {
    match read_text(path) {
        Ok(Some(text)) => Some(text),
        Ok(None) => {
            tracing::debug!(path = %path.display(), "{what}: file not found");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "{what}: cannot read file; ignored");
            None
        }
    }
}

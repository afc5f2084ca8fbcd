//! Safe output: nothing is half-written (temp file in the same folder, then rename) and nothing
//! existing is overwritten unless the caller says `force`.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Fails if `path` exists and `force` is false.
pub fn check_overwrite(path: &Path, force: bool) -> Result<()> {
    if path.exists() && !force {
        return Err(Error::file(path, "already exists (pass --force to overwrite)"));
    }
    Ok(())
}

/// Writes a file through `fill` into a temp file beside it, then renames it into place.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| Error::io(dir, e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        fill(&mut w).and_then(|_| w.flush()).map_err(|e| Error::io(path, e))?;
    }
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Reads a whole text file, naming it on error.
pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Builds a folder through `fill` in a temp folder beside `dir`, then swaps it into place, so
/// `dir` is never half-written. An existing `dir` is replaced (callers check `force` first).
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = match dir.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(parent).map_err(|e| Error::io(parent, e))?;
    fill(tmp.path())?;
    if dir.exists() {
        let old = tempfile::Builder::new().prefix(".old-").tempdir_in(parent).map_err(|e| Error::io(parent, e))?;
        let old_path = old.path().join("old");
        std::fs::rename(dir, &old_path).map_err(|e| Error::io(dir, e))?;
        std::fs::rename(tmp.keep(), dir).map_err(|e| Error::io(dir, e))?;
        drop(old); // removes the previous folder
    } else {
        std::fs::rename(tmp.keep(), dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Writes one JSON object per line, atomically.
pub fn write_jsonl<T: serde::Serialize>(path: &Path, rows: impl IntoIterator<Item = T>) -> Result<()> {
    write_atomic(path, |w| {
        for row in rows {
            serde_json::to_writer(&mut *w, &row)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

//! Safe output: nothing is half-written (a temp file or folder beside the target, then a
//! rename), nothing existing is overwritten unless the caller says `force`, and `force` replaces
//! only a regular file or a folder reasonrl wrote (it holds [`MARKER`]): never a symbolic link, a
//! device, a fifo or somebody else's folder. New files and folders get the usual permissions
//! (0666 / 0777 less the umask), as any program's would.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The file that marks a folder as reasonrl's own output (a run, a model, an evaluation), so
/// `--force` may replace it.
pub const MARKER: &str = ".reasonrl";

/// Checks, before any work, that `path` can be written: its folder can be created and written
/// in, and `path` is free, or is a regular file or a reasonrl folder and `force` is given.
/// Errors name `path` and say what is wrong.
pub fn check_overwrite(path: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {}
        Err(e) => return Err(Error::io(path, e)),
        Ok(meta) => {
            let kind = meta.file_type();
            let refuse = |what: &str| Err(Error::file(path, format!("{what}: reasonrl will not replace it")));
            if kind.is_symlink() {
                return refuse("is a symbolic link");
            }
            if kind.is_dir() && !path.join(MARKER).exists() {
                return refuse(&format!("is a folder that reasonrl did not write (it has no {MARKER} file)"));
            }
            if !kind.is_dir() && !kind.is_file() {
                return refuse("is not a regular file (a device, fifo or socket)");
            }
            if !force {
                return Err(Error::file(path, "already exists (pass --force to overwrite)"));
            }
        }
    }
    check_writable(path)
}

/// Can `path` be created? Its nearest existing ancestor must be a folder that we can write in.
fn check_writable(path: &Path) -> Result<()> {
    let Some(folder) = path.ancestors().skip(1).find(|a| a.as_os_str().is_empty() || a.exists()) else {
        return Ok(());
    };
    let folder = if folder.as_os_str().is_empty() { Path::new(".") } else { folder };
    if !folder.is_dir() {
        return Err(Error::file(path, format!("{} is not a directory", folder.display())));
    }
    let probe = TempPath::file_in(folder, "probe").map_err(|e| cannot_write(path, folder, e))?;
    drop(probe);
    Ok(())
}

/// The error for a folder we cannot create or write in: which ancestor is not a directory, or
/// that permission is denied, named by the user's `path`.
fn cannot_write(path: &Path, folder: &Path, e: std::io::Error) -> Error {
    if let Some(file) = folder.ancestors().find(|a| a.exists() && !a.is_dir()) {
        return Error::file(path, format!("{} is not a directory", file.display()));
    }
    let why = match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    };
    Error::file(path, format!("cannot write in {}: {why}", folder.display()))
}

/// The folder `path` goes in ("." for a bare file name), created if missing.
fn folder_of(path: &Path) -> Result<&Path> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| cannot_write(path, dir, e))?;
    Ok(dir)
}

/// A temp file or folder beside a target, removed when dropped unless it was renamed into place.
struct TempPath {
    path: PathBuf,
    is_dir: bool,
    kept: bool,
}

impl TempPath {
    /// `.tmp-NAME-PID-N` (then `suffix`) in `dir`, created new: never an existing file, and
    /// with the umask's permissions (tempfile's own are owner-only).
    fn new_in(dir: &Path, name: &str, suffix: &str, is_dir: bool) -> std::io::Result<Self> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        loop {
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".tmp-{name}-{}-{n}{suffix}", std::process::id()));
            let made = if is_dir {
                std::fs::create_dir(&path)
            } else {
                std::fs::OpenOptions::new().write(true).create_new(true).open(&path).map(drop)
            };
            match made {
                Ok(()) => return Ok(TempPath { path, is_dir, kept: false }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn file_in(dir: &Path, name: &str) -> std::io::Result<Self> {
        Self::new_in(dir, name, "", false)
    }

    /// Renames it to `target` (replacing a file there).
    fn persist(mut self, target: &Path) -> Result<()> {
        std::fs::rename(&self.path, target).map_err(|e| Error::io(target, e))?;
        self.kept = true;
        Ok(())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.kept {
            let _ = if self.is_dir { std::fs::remove_dir_all(&self.path) } else { std::fs::remove_file(&self.path) };
        }
    }
}

/// The file name of `path`, for naming its temp file.
fn name_of(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into())
}

/// Whether this process writes: in a data-parallel run only rank 0 does, and every writer of a
/// run's outputs goes through the helpers below, which do nothing on the other ranks.
pub fn writes_here() -> bool {
    crate::dist::is_main()
}

/// Writes a file through `fill` into a temp file beside it, then renames it into place.
pub fn write_atomic(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    if !writes_here() {
        return Ok(());
    }
    let dir = folder_of(path)?;
    let tmp = TempPath::file_in(dir, &name_of(path)).map_err(|e| cannot_write(path, dir, e))?;
    {
        let file = std::fs::OpenOptions::new().write(true).open(&tmp.path).map_err(|e| Error::io(path, e))?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w).and_then(|_| w.flush()).map_err(|e| Error::io(path, e))?;
    }
    tmp.persist(path)
}

/// Renders a file with `render`, which writes to the path it is given (a temp path beside
/// `path` ending in the same extension, for writers that pick the format from it), then renames
/// it into place.
pub fn write_atomic_via_path(path: &Path, render: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if !writes_here() {
        return Ok(());
    }
    let dir = folder_of(path)?;
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    let tmp = TempPath::new_in(dir, &name_of(path), &ext, false).map_err(|e| cannot_write(path, dir, e))?;
    render(&tmp.path)?;
    tmp.persist(path)
}

/// Reads a whole text file, naming it on error.
pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Builds a folder through `fill` in a temp folder beside `dir`, then swaps it into place, so
/// `dir` is never half-written; the new folder holds [`MARKER`]. An existing `dir` is replaced
/// (callers check with [`check_overwrite`] first).
pub fn replace_dir(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if !writes_here() {
        return Ok(());
    }
    let parent = folder_of(dir)?;
    let tmp = TempPath::new_in(parent, &name_of(dir), "", true).map_err(|e| cannot_write(dir, parent, e))?;
    fill(&tmp.path)?;
    mark(&tmp.path)?;
    if dir.exists() {
        let old =
            TempPath::new_in(parent, &format!("{}-old", name_of(dir)), "", true).map_err(|e| Error::io(dir, e))?;
        let old_path = old.path.join("old");
        std::fs::rename(dir, &old_path).map_err(|e| Error::io(dir, e))?;
        tmp.persist(dir)?;
        drop(old); // removes the previous folder
    } else {
        tmp.persist(dir)?;
    }
    Ok(())
}

/// Creates `dir` (and its parents) as a reasonrl output folder, with [`MARKER`] in it.
pub fn create_output_dir(dir: &Path) -> Result<()> {
    if !writes_here() {
        return Ok(());
    }
    let parent = folder_of(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| cannot_write(dir, parent, e))?;
    mark(dir)
}

fn mark(dir: &Path) -> Result<()> {
    let marker = dir.join(MARKER);
    if marker.exists() {
        return Ok(());
    }
    std::fs::write(&marker, b"written by reasonrl; --force may replace this folder\n")
        .map_err(|e| Error::io(&marker, e))
}

/// Removes a folder reasonrl wrote (on rank 0 only, like every write).
pub fn remove_dir(dir: &Path) -> Result<()> {
    if !writes_here() {
        return Ok(());
    }
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_folders_honour_the_umask_and_leave_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        // What the umask gives any program's new file and folder here.
        std::fs::write(dir.path().join("plain"), b"x").unwrap();
        std::fs::create_dir(dir.path().join("plain-dir")).unwrap();
        let out = dir.path().join("sub/out.txt");
        write_atomic(&out, |w| w.write_all(b"hello")).unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello");
        assert_eq!(mode(&out), mode(&dir.path().join("plain")));
        let model = dir.path().join("model");
        replace_dir(&model, |tmp| std::fs::write(tmp.join("a"), b"1").map_err(|e| Error::io(tmp, e))).unwrap();
        assert_eq!(mode(&model), mode(&dir.path().join("plain-dir")));
        assert!(model.join(MARKER).exists());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .chain(std::fs::read_dir(dir.path().join("sub")).unwrap())
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
    }

    #[test]
    fn force_replaces_only_regular_files_and_our_folders() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file.txt");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_overwrite(&file, false).unwrap_err().to_string().contains("--force"));
        check_overwrite(&file, true).unwrap();

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let err = check_overwrite(&link, true).unwrap_err().to_string();
        assert!(err.contains("link") && err.contains("symbolic link"), "{err}");

        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let err = check_overwrite(&fifo, true).unwrap_err().to_string();
        assert!(err.contains("fifo") && err.contains("not a regular file"), "{err}");
        let err = check_overwrite(Path::new("/dev/null"), true).unwrap_err().to_string();
        assert!(err.contains("/dev/null") && err.contains("not a regular file"), "{err}");

        let foreign = dir.path().join("photos");
        std::fs::create_dir(&foreign).unwrap();
        let err = check_overwrite(&foreign, true).unwrap_err().to_string();
        assert!(err.contains("photos") && err.contains("did not write"), "{err}");
        let ours = dir.path().join("run");
        create_output_dir(&ours).unwrap();
        check_overwrite(&ours, true).unwrap();
    }

    #[test]
    fn unwritable_places_are_named_by_the_users_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file.txt");
        std::fs::write(&file, b"x").unwrap();
        let out = file.join("eval/summary.json");
        let err = check_overwrite(&out, false).unwrap_err().to_string();
        assert!(err.starts_with(&out.display().to_string()), "{err}");
        assert!(err.contains("file.txt is not a directory"), "{err}");
        let err = write_atomic(&out, |w| w.write_all(b"x")).unwrap_err().to_string();
        assert!(err.starts_with(&out.display().to_string()) && err.contains("is not a directory"), "{err}");
        let err = create_output_dir(&file.join("run")).unwrap_err().to_string();
        assert!(err.contains("is not a directory") && !err.contains(".tmp-"), "{err}");
    }
}

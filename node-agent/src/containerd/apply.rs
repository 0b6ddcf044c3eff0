//! Writing hosts.toml files under containerd's config_path, and undoing it.
//!
//! Before dfdaemon writes a registry's directory, the directory as it is
//! (hosts.toml and certificates) is copied to
//! `<config_path>/.dragonfly-backup/<dir>/original/`, or its absence
//! recorded, and what dfdaemon writes is kept beside it (`written`). An
//! apply that finds its own file renders from the backup again, so applying
//! twice is a no-op and a new mirror address replaces the old one. An apply
//! that finds another writer's file (an admin's edit, a tool that rewrote
//! the directory) takes that as the new original: it is backed up (minus
//! the mirror host, if the edit kept it) and the mirror merged into it, so
//! later edits survive. `restore` puts back what was there before the last
//! apply, byte for byte; a file another writer changed after that apply is
//! left to that writer (only the mirror host is taken out of it).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::ContainerdError;
use super::hosts::{self, Registry};

pub const BACKUP_DIR: &str = ".dragonfly-backup";
/// Inside a registry's backup: the original directory's files, or nothing
/// (the directory did not exist).
const ORIGINAL: &str = "original";
/// Inside a registry's backup: the exact hosts.toml dfdaemon last wrote.
const WRITTEN: &str = "written";
const HOSTS: &str = "hosts.toml";

/// What `apply` did to one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Written(PathBuf),
    Unchanged(PathBuf),
    /// Another writer had changed the file since dfdaemon wrote it: its
    /// version is the new original, and the mirror was merged into it.
    Readopted(PathBuf),
}

/// What `restore` did to one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The original directory is back.
    Original(PathBuf),
    /// There was none: what apply created is gone.
    Removed(PathBuf),
    /// Another writer changed the file after dfdaemon's last apply: its
    /// version stays (without the mirror host).
    KeptOtherWriter(PathBuf),
    /// Nothing was backed up for this registry.
    NothingToDo(String),
}

fn io(path: &Path, source: std::io::Error) -> ContainerdError {
    ContainerdError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn backup_of(config_path: &Path, dir: &str) -> PathBuf {
    config_path.join(BACKUP_DIR).join(dir)
}

pub fn apply(
    config_path: &Path,
    registries: &[Registry],
    mirror: &str,
) -> Result<Vec<Applied>, ContainerdError> {
    registries
        .iter()
        .map(|registry| apply_one(config_path, registry, mirror))
        .collect()
}

/// Writes one registry's hosts.toml (see the module's comment).
pub fn apply_one(
    config_path: &Path,
    registry: &Registry,
    mirror: &str,
) -> Result<Applied, ContainerdError> {
    let dir = config_path.join(&registry.dir);
    let target = dir.join(HOSTS);
    let backup = backup_of(config_path, &registry.dir);
    let current = read_optional(&target)?;
    let mut readopted = false;
    if !backup.exists() {
        save_backup(&dir, &backup, None)?;
    } else if !is_ours(&backup, current.as_deref(), registry, mirror)? {
        // Another writer's file: it becomes the original, without the
        // mirror host if the writer edited ours and kept it.
        let stripped = match &current {
            Some(text) if hosts::has_ours(text, mirror) => {
                Some(hosts::strip_ours(text, mirror).map_err(|e| in_file(&target, e))?)
            }
            _ => None,
        };
        save_backup(&dir, &backup, stripped.as_deref())?;
        readopted = true;
    }
    let original = read_optional(&backup.join(ORIGINAL).join(HOSTS))?.unwrap_or_default();
    let rendered = hosts::render(&original, registry, mirror).map_err(|e| in_file(&target, e))?;
    let record = backup.join(WRITTEN);
    if current.as_deref() == Some(rendered.as_str()) {
        if read_optional(&record)?.as_deref() != Some(rendered.as_str()) {
            write_atomic(&record, rendered.as_bytes())?;
        }
        return Ok(Applied::Unchanged(target));
    }
    std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
    // The record first: a crash between the two leaves a file that reads
    // as another writer's, which the next apply adopts, never loses.
    write_atomic(&record, rendered.as_bytes())?;
    write_atomic(&target, rendered.as_bytes())?;
    Ok(if readopted {
        Applied::Readopted(target)
    } else {
        Applied::Written(target)
    })
}

/// Whether another writer replaced the registry's hosts.toml since
/// dfdaemon last wrote it, taking the mirror out (an edit that keeps the
/// mirror is no fight). False before the first apply.
pub fn mirror_removed_by_other_writer(
    config_path: &Path,
    registry: &Registry,
    mirror: &str,
) -> Result<bool, ContainerdError> {
    let backup = backup_of(config_path, &registry.dir);
    if !backup.exists() {
        return Ok(false);
    }
    let current = read_optional(&config_path.join(&registry.dir).join(HOSTS))?;
    if is_ours(&backup, current.as_deref(), registry, mirror)? {
        return Ok(false);
    }
    Ok(!current.is_some_and(|text| hosts::has_ours(&text, mirror)))
}

/// Whether `current` is the file dfdaemon last wrote. Backups made before
/// the record existed count the file as ours when it is what rendering the
/// original gives.
fn is_ours(
    backup: &Path,
    current: Option<&str>,
    registry: &Registry,
    mirror: &str,
) -> Result<bool, ContainerdError> {
    if let Some(written) = read_optional(&backup.join(WRITTEN))? {
        return Ok(current == Some(written.as_str()));
    }
    let original = read_optional(&backup.join(ORIGINAL).join(HOSTS))?.unwrap_or_default();
    Ok(
        match (current, hosts::render(&original, registry, mirror)) {
            (Some(current), Ok(rendered)) => current == rendered,
            _ => false,
        },
    )
}

fn in_file(path: &Path, e: ContainerdError) -> ContainerdError {
    match e {
        ContainerdError::BadHostsToml(why) => {
            ContainerdError::BadHostsToml(format!("{}: {why} (left untouched)", path.display()))
        }
        other => other,
    }
}

fn read_optional(path: &Path) -> Result<Option<String>, ContainerdError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

/// Every registry with a backup when `registries` is empty.
pub fn restore(
    config_path: &Path,
    registries: &[Registry],
    mirror: &str,
) -> Result<Vec<Restored>, ContainerdError> {
    let dirs: Vec<String> = if registries.is_empty() {
        let root = config_path.join(BACKUP_DIR);
        match std::fs::read_dir(&root) {
            Ok(entries) => {
                let mut dirs = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|e| io(&root, e))?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if !name.starts_with('.') {
                        dirs.push(name);
                    }
                }
                dirs.sort();
                dirs
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io(&root, e)),
        }
    } else {
        registries.iter().map(|r| r.dir.clone()).collect()
    };
    let mut done = Vec::new();
    for name in dirs {
        let backup = backup_of(config_path, &name);
        let dir = config_path.join(&name);
        if !backup.exists() {
            done.push(Restored::NothingToDo(name));
            continue;
        }
        let target = dir.join(HOSTS);
        let current = read_optional(&target)?;
        let written = read_optional(&backup.join(WRITTEN))?;
        // Without a record (a backup from before records), the file is ours.
        if written.is_some() && current != written {
            if let Some(text) = current.filter(|t| hosts::has_ours(t, mirror)) {
                let stripped = hosts::strip_ours(&text, mirror).map_err(|e| in_file(&target, e))?;
                write_atomic(&target, stripped.as_bytes())?;
            }
            std::fs::remove_dir_all(&backup).map_err(|e| io(&backup, e))?;
            done.push(Restored::KeptOtherWriter(dir));
            continue;
        }
        let original = backup.join(ORIGINAL);
        // Move the current directory aside, put the original in place, then
        // delete what was moved aside: containerd sees one or the other.
        let aside = config_path.join(BACKUP_DIR).join(format!(".aside-{name}"));
        remove_if_exists(&aside)?;
        if dir.exists() {
            std::fs::rename(&dir, &aside).map_err(|e| io(&dir, e))?;
        }
        let result = if original.exists() {
            std::fs::rename(&original, &dir).map_err(|e| io(&original, e))?;
            Restored::Original(dir)
        } else {
            Restored::Removed(dir)
        };
        remove_if_exists(&aside)?;
        std::fs::remove_dir_all(&backup).map_err(|e| io(&backup, e))?;
        done.push(result);
    }
    let root = config_path.join(BACKUP_DIR);
    // Drop the backup root once empty; leave it if anything else is there.
    let _ = std::fs::remove_dir(&root);
    Ok(done)
}

fn remove_if_exists(path: &Path) -> Result<(), ContainerdError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path, e)),
    }
}

/// Copies `dir` (if it exists) to `backup/original`, with `hosts_override`
/// as its hosts.toml when given, replacing any earlier backup. Built under a
/// temp name and swapped in, so a crash never leaves a half backup that
/// would later be "restored".
fn save_backup(
    dir: &Path,
    backup: &Path,
    hosts_override: Option<&str>,
) -> Result<(), ContainerdError> {
    let parent = backup.parent().unwrap_or(backup);
    std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
    let name = backup
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{name}"));
    remove_if_exists(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    if dir.exists() {
        copy_tree(dir, &tmp.join(ORIGINAL))?;
        if let Some(text) = hosts_override {
            write_atomic(&tmp.join(ORIGINAL).join(HOSTS), text.as_bytes())?;
        }
    }
    sync_dir(&tmp)?;
    let old = parent.join(format!(".old-{name}"));
    remove_if_exists(&old)?;
    if backup.exists() {
        std::fs::rename(backup, &old).map_err(|e| io(backup, e))?;
    }
    std::fs::rename(&tmp, backup).map_err(|e| io(backup, e))?;
    remove_if_exists(&old)?;
    sync_dir(parent)
}

/// Copies files and directories (permissions included); symlinks are
/// recreated as links, not followed.
fn copy_tree(from: &Path, to: &Path) -> Result<(), ContainerdError> {
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    let meta = std::fs::metadata(from).map_err(|e| io(from, e))?;
    std::fs::set_permissions(to, meta.permissions()).map_err(|e| io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| io(from, e))? {
        let entry = entry.map_err(|e| io(from, e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| io(&src, e))?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&src).map_err(|e| io(&src, e))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(|e| io(&dst, e))?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| io(&src, e))?;
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|e| io(&dst, e))?;
        }
    }
    Ok(())
}

/// Writes through a temp file in the same directory and a rename, so
/// containerd never reads a half-written hosts.toml.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), ContainerdError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut file = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), ContainerdError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io(dir, e))
}

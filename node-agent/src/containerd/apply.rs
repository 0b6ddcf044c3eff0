//! Writing hosts.toml files under containerd's config_path, and undoing it.
//!
//! Before the first change to a registry's directory, the whole directory
//! (hosts.toml and certificates) is copied to
//! `<config_path>/.dragonfly-backup/<dir>/`, or its absence recorded. Every
//! apply renders from that original, so applying again is a no-op and a new
//! mirror address replaces the old one instead of piling up. `restore` puts
//! the original back byte for byte and drops the backup.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::error::ContainerdError;
use super::hosts::{self, Registry};

pub const BACKUP_DIR: &str = ".dragonfly-backup";
/// Inside a registry's backup: the original directory's files, or nothing
/// (the directory did not exist).
const ORIGINAL: &str = "original";
const HOSTS: &str = "hosts.toml";

/// What `apply` did to one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Written(PathBuf),
    Unchanged(PathBuf),
}

/// What `restore` did to one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The original directory is back.
    Original(PathBuf),
    /// There was none: what apply created is gone.
    Removed(PathBuf),
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
    let mut done = Vec::new();
    for registry in registries {
        let dir = config_path.join(&registry.dir);
        let backup = backup_of(config_path, &registry.dir);
        if !backup.exists() {
            save_backup(&dir, &backup)?;
        }
        let original_hosts = backup.join(ORIGINAL).join(HOSTS);
        let original = match std::fs::read_to_string(&original_hosts) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(&original_hosts, e)),
        };
        let rendered = hosts::render(&original, registry, mirror).map_err(|e| match e {
            ContainerdError::BadHostsToml(why) => ContainerdError::BadHostsToml(format!(
                "{}: {why} (left untouched)",
                dir.join(HOSTS).display()
            )),
            other => other,
        })?;
        let target = dir.join(HOSTS);
        if std::fs::read_to_string(&target).ok().as_deref() == Some(rendered.as_str()) {
            done.push(Applied::Unchanged(target));
            continue;
        }
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        write_atomic(&target, rendered.as_bytes())?;
        done.push(Applied::Written(target));
    }
    Ok(done)
}

/// Every registry with a backup when `registries` is empty.
pub fn restore(
    config_path: &Path,
    registries: &[Registry],
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

/// Copies `dir` (if it exists) to `backup/original`, through a temp name so
/// a crash never leaves a half backup that would later be "restored".
fn save_backup(dir: &Path, backup: &Path) -> Result<(), ContainerdError> {
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
    }
    sync_dir(&tmp)?;
    std::fs::rename(&tmp, backup).map_err(|e| io(backup, e))?;
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

//! The task's workspace changes: read from the overlay's upper layer, shown as a diff and,
//! when the user asks, applied back to the host directory.
//!
//! The upper layer is written by the agent, so applying it treats every entry as hostile:
//! nothing is followed through a symlink, special files are skipped, and ownership on the
//! host is the workspace owner's, never the cell's.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use crate::sys;

/// What happened to one path.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// Created by the task.
    Added,
    /// Existed and was changed (content or metadata).
    Modified,
    /// Existed and was removed.
    Deleted,
}

/// One changed path, relative to the workspace root.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// The path relative to /workspace.
    pub path: PathBuf,
    /// What happened.
    pub kind: ChangeKind,
}

/// Why changes could not be read or applied.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A file operation failed.
    #[error("cannot {action} `{path}`: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Applying would have written through a symlink.
    #[error("refusing to write `{0}`: a parent directory in the workspace is a symlink")]
    Symlink(PathBuf),
}

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> WorkspaceError + 'a {
    move |source| WorkspaceError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(dir: &Path) -> bool {
    sys::lgetxattr(dir, "trusted.overlay.opaque").is_some_and(|v| v == b"y")
}

/// Lists the changes the upper layer holds relative to `lower` (the host workspace, or
/// `None` when the task had no workspace), sorted by path.
pub fn workspace_changes(
    upper: &Path,
    lower: Option<&Path>,
) -> Result<Vec<Change>, WorkspaceError> {
    let mut out = Vec::new();
    walk(upper, lower, Path::new(""), &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(
    upper: &Path,
    lower: Option<&Path>,
    rel: &Path,
    out: &mut Vec<Change>,
) -> Result<(), WorkspaceError> {
    let dir = upper.join(rel);
    let entries = fs::read_dir(&dir).map_err(io_err("read", &dir))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err("read", &dir))?;
        names.push(entry.file_name());
    }
    if !rel.as_os_str().is_empty() && is_opaque(&dir) {
        // The directory replaced a lower one: whatever the lower had is gone.
        if let Some(l) = lower.map(|l| l.join(rel))
            && let Ok(lower_entries) = fs::read_dir(&l)
        {
            for e in lower_entries.flatten() {
                if !names.contains(&e.file_name()) {
                    out.push(Change {
                        path: rel.join(e.file_name()),
                        kind: ChangeKind::Deleted,
                    });
                }
            }
        }
    }
    for name in names {
        let path = rel.join(&name);
        let full = upper.join(&path);
        let meta = fs::symlink_metadata(&full).map_err(io_err("inspect", &full))?;
        let in_lower = lower.is_some_and(|l| fs::symlink_metadata(l.join(&path)).is_ok());
        if is_whiteout(&meta) {
            if in_lower {
                out.push(Change {
                    path,
                    kind: ChangeKind::Deleted,
                });
            }
        } else if meta.is_dir() {
            if !in_lower {
                out.push(Change {
                    path: path.clone(),
                    kind: ChangeKind::Added,
                });
            }
            walk(upper, lower, &path, out)?;
        } else {
            let kind = if in_lower {
                ChangeKind::Modified
            } else {
                ChangeKind::Added
            };
            out.push(Change { path, kind });
        }
    }
    Ok(())
}

/// Applies the upper layer's changes to the host workspace `lower`. Files take the owner
/// of `lower` itself. Returns what was applied.
pub fn apply_changes(upper: &Path, lower: &Path) -> Result<Vec<Change>, WorkspaceError> {
    let changes = workspace_changes(upper, Some(lower))?;
    let root_meta = fs::metadata(lower).map_err(io_err("inspect", lower))?;
    let (uid, gid) = (root_meta.uid(), root_meta.gid());
    // Check every target before touching anything, so a refusal changes nothing.
    for change in &changes {
        safe_target(lower, &change.path)?;
    }
    // Deletions first (an opaque directory may delete then re-add), then additions in
    // path order so parents exist before children.
    for change in changes.iter().filter(|c| c.kind == ChangeKind::Deleted) {
        let target = safe_target(lower, &change.path)?;
        match fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => {
                fs::remove_dir_all(&target).map_err(io_err("remove", &target))?
            }
            Ok(_) => fs::remove_file(&target).map_err(io_err("remove", &target))?,
            Err(_) => {}
        }
    }
    for change in changes.iter().filter(|c| c.kind != ChangeKind::Deleted) {
        let src = upper.join(&change.path);
        let target = safe_target(lower, &change.path)?;
        let meta = fs::symlink_metadata(&src).map_err(io_err("inspect", &src))?;
        if let Ok(existing) = fs::symlink_metadata(&target)
            && (existing.file_type().is_symlink() || (existing.is_dir() != meta.is_dir()))
        {
            if existing.is_dir() {
                fs::remove_dir_all(&target).map_err(io_err("replace", &target))?;
            } else {
                fs::remove_file(&target).map_err(io_err("replace", &target))?;
            }
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            if !target.is_dir() {
                fs::create_dir(&target).map_err(io_err("create", &target))?;
            }
        } else if ft.is_symlink() {
            let link = fs::read_link(&src).map_err(io_err("read link", &src))?;
            symlink(&link, &target).map_err(io_err("create link", &target))?;
        } else if ft.is_file() {
            // Copy beside the target and rename over it: writing into the existing inode
            // would also change every hard link to it, possibly outside the workspace.
            let tmp = target.with_file_name(format!(
                ".agentspace-commit-{}",
                target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ));
            let _ = fs::remove_file(&tmp);
            fs::copy(&src, &tmp).map_err(io_err("copy to", &tmp))?;
            fs::rename(&tmp, &target).map_err(io_err("replace", &target))?;
        } else {
            continue; // fifos, sockets, devices: never copied to the host
        }
        if !ft.is_symlink() {
            let mode = meta.permissions().mode() & 0o777;
            fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", &target))?;
        }
        lchown(&target, Some(uid), Some(gid)).map_err(io_err("chown", &target))?;
    }
    Ok(changes)
}

/// `lower/rel`, after checking that no existing parent below `lower` is a symlink.
fn safe_target(lower: &Path, rel: &Path) -> Result<PathBuf, WorkspaceError> {
    let mut cur = lower.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(c) = components.next() {
        cur.push(c);
        if components.peek().is_some()
            && fs::symlink_metadata(&cur).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(WorkspaceError::Symlink(rel.to_path_buf()));
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_listed_and_applied_without_following_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        fs::create_dir_all(upper.join("newdir")).unwrap();
        fs::create_dir_all(&lower).unwrap();
        fs::write(lower.join("notes.txt"), "old").unwrap();
        fs::write(upper.join("notes.txt"), "new").unwrap();
        fs::write(upper.join("newdir/a.txt"), "a").unwrap();
        symlink("/etc/passwd", upper.join("link")).unwrap();
        let changes = workspace_changes(&upper, Some(&lower)).unwrap();
        let kinds: Vec<_> = changes
            .iter()
            .map(|c| (c.path.to_str().unwrap().to_owned(), c.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("link".to_owned(), ChangeKind::Added),
                ("newdir".to_owned(), ChangeKind::Added),
                ("newdir/a.txt".to_owned(), ChangeKind::Added),
                ("notes.txt".to_owned(), ChangeKind::Modified),
            ]
        );
        apply_changes(&upper, &lower).unwrap();
        assert_eq!(fs::read_to_string(lower.join("notes.txt")).unwrap(), "new");
        assert_eq!(fs::read_to_string(lower.join("newdir/a.txt")).unwrap(), "a");
        assert_eq!(
            fs::read_link(lower.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn committing_replaces_files_instead_of_writing_through_hard_links() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower) = (t.path().join("upper"), t.path().join("lower"));
        fs::create_dir_all(&upper).unwrap();
        fs::create_dir_all(&lower).unwrap();
        let outside = t.path().join("outside.txt");
        fs::write(&outside, "precious").unwrap();
        fs::hard_link(&outside, lower.join("linked.txt")).unwrap();
        fs::write(upper.join("linked.txt"), "agent wrote this").unwrap();
        apply_changes(&upper, &lower).unwrap();
        assert_eq!(
            fs::read_to_string(lower.join("linked.txt")).unwrap(),
            "agent wrote this"
        );
        assert_eq!(fs::read_to_string(&outside).unwrap(), "precious");
    }

    #[test]
    fn a_symlinked_parent_in_the_host_workspace_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower, outside) = (
            t.path().join("upper"),
            t.path().join("lower"),
            t.path().join("outside"),
        );
        fs::create_dir_all(upper.join("sub")).unwrap();
        fs::create_dir_all(&lower).unwrap();
        fs::create_dir_all(&outside).unwrap();
        symlink(&outside, lower.join("sub")).unwrap();
        fs::write(upper.join("sub/x"), "x").unwrap();
        fs::write(upper.join("ok.txt"), "ok").unwrap();
        // `sub` is a symlink in the host workspace: writing `sub/x` would land outside.
        assert!(matches!(
            apply_changes(&upper, &lower),
            Err(WorkspaceError::Symlink(_))
        ));
        assert!(!outside.join("x").exists());
        assert!(!lower.join("ok.txt").exists(), "a refusal applies nothing");
    }
}

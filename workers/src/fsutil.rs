//! Small filesystem helpers shared by the registry and the sandboxes.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Changes the owner of `path` (not following symlinks).
pub fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

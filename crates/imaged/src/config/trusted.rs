//! Reading the configuration file only when nobody but root and imaged's
//! own user could have written it, as sshd's `StrictModes` does: the file
//! grants access, so a file (or a directory above it) another user can
//! write would let that user grant itself anything at the next reload.
//!
//! The file must be owned by root or imaged's user and writable by its
//! owner alone; every directory above it, on the path as given and on the
//! path links resolve to, must be owned by one of them and writable by
//! nobody else, or be sticky (as `/tmp` is: others may add entries there
//! but not replace ours). The file is checked as opened, so it cannot be
//! swapped between the check and the read.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// The file's text, once it and the directories above it are trusted.
pub fn read(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let own = nix::unistd::geteuid().as_raw();
    let meta = file.metadata()?;
    // /dev/null (what `IMAGED_CONFIG=/dev/null` names: no file) reads empty
    // whoever writes to it.
    if meta.file_type().is_char_device() && meta.rdev() == nix::sys::stat::makedev(1, 3) {
        return Ok(String::new());
    }
    check(path, &meta, own, false)?;
    let absolute = std::path::absolute(path)?;
    let resolved = std::fs::canonicalize(path)?;
    for dir in absolute.ancestors().skip(1).chain(resolved.ancestors().skip(1)) {
        check(dir, &std::fs::metadata(dir)?, own, true)?;
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

/// Refuses `meta` (of `path`, a directory when `dir`) if someone other
/// than root or `own` owns it or could write it.
fn check(path: &Path, meta: &Metadata, own: u32, dir: bool) -> io::Result<()> {
    let mode = meta.mode() & 0o7777;
    let what = if dir { "the directory" } else { "the file" };
    let refuse = |why: String| {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing it: {what} {} {why}, so another user could change imaged's settings and access policy; \
                 only root and imaged's own user (uid {own}) may be able to write it (chown root, chmod go-w)",
                path.display()
            ),
        ))
    };
    if meta.uid() != 0 && meta.uid() != own {
        return refuse(format!("is owned by uid {}", meta.uid()));
    }
    let sticky = dir && mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        return refuse(format!("is writable by its group or others (mode {mode:04o})"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_file_others_can_write_is_refused_naming_it_and_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "log_level = \"info\"\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(&file).is_ok());
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let refused = read(&file).unwrap_err().to_string();
        assert!(refused.contains("config.toml") && refused.contains("0666"), "{refused}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        // A directory above it that others can write, and that is not
        // sticky, is refused too.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = read(&file).unwrap_err().to_string();
        assert!(
            refused.contains("the directory") && refused.contains("0777"),
            "{refused}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(read(&file).is_ok());
    }
}

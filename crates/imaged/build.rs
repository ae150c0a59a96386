//! Records the git revision the daemon is built from, for `--version` and the
//! Version service. `IMAGED_GIT_REVISION` in the environment overrides it
//! (for builds from a source tarball).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=IMAGED_GIT_REVISION");
    let revision = std::env::var("IMAGED_GIT_REVISION")
        .ok()
        .unwrap_or_else(|| git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned()));
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        println!("cargo:rerun-if-changed={git_dir}/refs/heads");
    }
    println!("cargo:rustc-env=IMAGED_GIT_REVISION={revision}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

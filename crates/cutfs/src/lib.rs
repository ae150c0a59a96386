//! The tests' side of cutfs: [`Mount`] starts the `cutfs` binary on a
//! directory and sends it the commands its `main.rs` lists; [`can_mount`]
//! says whether this machine can. The file system itself is the binary's.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a command's answer may take.
const ANSWER: Duration = Duration::from_secs(10);

/// A mounted cutfs, driven through its standard input and output. Dropping
/// it unmounts.
pub struct Mount {
    child: Child,
    commands: ChildStdin,
    lines: mpsc::Receiver<String>,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
}

impl Mount {
    /// Mounts the cutfs `binary` on `mountpoint` (made if missing) and waits
    /// until it is mounted.
    pub fn start(binary: &Path, mountpoint: &Path) -> Mount {
        std::fs::create_dir_all(mountpoint).expect("make the mount point");
        let mut child = Command::new(binary)
            .arg(mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start cutfs");
        let commands = child.stdin.take().expect("cutfs's input");
        let stdout = BufReader::new(child.stdout.take().expect("cutfs's output"));
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mount = Mount {
            child,
            commands,
            lines,
            mountpoint: mountpoint.to_owned(),
        };
        assert_eq!(mount.line(ANSWER).as_deref(), Some("ok mounted"));
        mount
    }

    /// The next line cutfs prints within `within`: an answer, or a
    /// `stalled OP NAME` when an armed trap holds an operation.
    pub fn line(&mut self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// Sends `command` and returns its answer, the next line starting
    /// `ok` or `error` (any other line before it is passed over).
    pub fn command(&mut self, command: &str) -> String {
        writeln!(self.commands, "{command}").expect("cutfs takes commands");
        loop {
            let line = self.line(ANSWER).expect("cutfs answers");
            if line.starts_with("ok") || line.starts_with("error") {
                return line;
            }
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = writeln!(self.commands, "quit");
        for _ in 0..1000 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
    }
}

/// Whether FUSE can be mounted here: root and `/dev/fuse`. CI has both, so
/// it panics there without them; elsewhere the caller skips.
pub fn can_mount() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let can = root && Path::new("/dev/fuse").exists();
    if !can {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI mounts FUSE as root");
        // Written past libtest's capture, so the skip shows in `cargo test`.
        use std::io::Write;
        let test = std::thread::current().name().unwrap_or("a test").to_owned();
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: FUSE needs root and /dev/fuse");
    }
    can
}

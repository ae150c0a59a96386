//! Test harness: starts the real `imaged` binary on a temporary socket and
//! data directory, connects gRPC clients to it, and stops or kills it.

#![allow(dead_code)]

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use imaged_api::containerd::types::Descriptor;
use imaged_api::containerd::v1 as seed;
use tonic::transport::{Channel, Endpoint};

pub mod writers;

/// The message limit containerd's clients (and imaged) use: 16 MiB.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Says that the running test skips and why, on a line of its own in
/// `cargo test`'s output (libtest keeps a passing test's `eprintln!` to
/// itself, not a direct write to standard error). The test still counts as
/// passed, so the line is how a skip is seen; under `CI=true` the checks
/// that call this fail instead.
pub fn skipped(reason: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
}

/// Whether `ctr` can be run; panics under CI when it cannot.
pub fn have_ctr() -> bool {
    have_tool("ctr", "containerd")
}

/// Whether `tool` (from Debian's `package`) can be run; panics under CI,
/// which installs it, when it cannot.
pub fn have_tool(tool: &str, package: &str) -> bool {
    // Most tools say their version with --version; socat only with -V.
    let found = ["--version", "-V"]
        .iter()
        .any(|flag| Command::new(tool).arg(flag).output().is_ok_and(|o| o.status.success()));
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is not installed; .ci/run installs Debian's {package} package"
        );
        skipped(&format!("{tool} is not installed (apt-get install {package})"));
    }
    found
}

/// Whether the tests run as root, which they need to act as other users;
/// panics under CI, which runs as root, when they do not.
pub fn is_root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        skipped("needs root to act as other users");
    }
    root
}

/// What a finished program printed: its standard output, then its
/// standard error.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Path of the `imagectl` binary built beside the daemon.
pub static IMAGECTL: std::sync::LazyLock<PathBuf> =
    std::sync::LazyLock::new(|| binary(option_env!("CARGO_BIN_EXE_imagectl"), "imagectl"));

/// Runs `imagectl args` against `daemon`, with no namespace from the
/// environment and a wide terminal, and waits for it.
pub fn imagectl(daemon: &Daemon, args: &[&str]) -> std::process::Output {
    Command::new(&*IMAGECTL)
        .arg("--address")
        .arg(&daemon.socket)
        .args(args)
        .env_remove("IMAGED_NAMESPACE")
        .env("COLUMNS", "200")
        .output()
        .expect("run imagectl")
}

/// Path of the daemon binary Cargo built for these tests.
pub static IMAGED: std::sync::LazyLock<PathBuf> =
    std::sync::LazyLock::new(|| binary(option_env!("CARGO_BIN_EXE_imaged"), "imaged"));

/// A workspace binary: where Cargo says (in its own package's tests), else
/// next to this test executable (`target/<profile>/`), where
/// `cargo test --workspace` builds every binary before running any test.
pub fn binary(built: Option<&str>, name: &str) -> PathBuf {
    if let Some(path) = built {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let path = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{name} is not built at {}; run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

/// A running (or stopped) imaged with its own socket and data directory.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub log: PathBuf,
    /// Flags beyond `--socket` and `--root`, kept for restarts; a test may
    /// change them for the next.
    pub args: Vec<String>,
    /// Environment variables the next start (and restart) sets.
    pub env: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts a daemon in a fresh temporary directory and waits until it
    /// accepts connections.
    pub fn start() -> Daemon {
        Daemon::start_logging("info")
    }

    /// Starts a daemon like [`Daemon::start`] with the log filter `filter`.
    pub fn start_logging(filter: &str) -> Daemon {
        Daemon::start_with(filter, &[])
    }

    /// Starts a daemon like [`Daemon::start`] with the log filter `filter`
    /// and the extra flags `args`, which restarts keep.
    pub fn start_with(filter: &str, args: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut daemon = Daemon::spawn_with(
            &dir.path().join("run/imaged.sock"),
            &dir.path().join("data"),
            filter,
            args,
        );
        daemon._dir = Some(dir);
        daemon.wait_ready();
        daemon
    }

    /// Starts a daemon like [`Daemon::start`] with the environment `env`
    /// set (restarts set it too), and waits until it is ready.
    pub fn start_env(env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut daemon = Daemon::spawn_env(
            &dir.path().join("run/imaged.sock"),
            &dir.path().join("data"),
            "info",
            Vec::new(),
            env,
        );
        daemon._dir = Some(dir);
        daemon.wait_ready();
        daemon
    }

    /// Starts a daemon on `socket` and `root` without waiting for it.
    pub fn spawn(socket: &Path, root: &Path) -> Daemon {
        Daemon::spawn_logging(socket, root, "info")
    }

    /// Starts a daemon with the log filter `filter` without waiting for it.
    pub fn spawn_logging(socket: &Path, root: &Path, filter: &str) -> Daemon {
        Daemon::spawn_with(socket, root, filter, Vec::new())
    }

    /// Starts a daemon on `socket` and `root` with the extra flags `args`,
    /// which restarts keep, without waiting for it.
    pub fn spawn_with(socket: &Path, root: &Path, filter: &str, args: Vec<String>) -> Daemon {
        Daemon::spawn_env(socket, root, filter, args, Vec::new())
    }

    fn spawn_env(socket: &Path, root: &Path, filter: &str, args: Vec<String>, env: Vec<(String, String)>) -> Daemon {
        // Beside the socket, not the data: a test may give the data a small
        // file system of its own.
        let log = socket.with_extension(format!("log.{}", unique()));
        fs::create_dir_all(log.parent().unwrap()).unwrap();
        let child = Command::new(&*IMAGED)
            .arg("--socket")
            .arg(socket)
            .arg("--root")
            .arg(root)
            .args(&args)
            .env("IMAGED_LOG_LEVEL", filter)
            // A host's own /etc/imaged/config.toml must not change a test.
            .env("IMAGED_CONFIG", "/dev/null")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn imaged");
        Daemon {
            child: Some(child),
            socket: socket.to_owned(),
            root: root.to_owned(),
            log,
            args,
            env,
            _dir: None,
        }
    }

    /// Starts another daemon on this one's socket and data directory (after
    /// this one stopped), keeping the temporary directory alive.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running daemon");
        self.spawn_again();
        self.wait_ready();
    }

    /// Starts another daemon as [`Daemon::restart`] does, without waiting.
    pub fn spawn_again(&mut self) {
        assert!(self.child.is_none(), "restart of a running daemon");
        let mut next = Daemon::spawn_env(&self.socket, &self.root, "info", self.args.clone(), self.env.clone());
        self.child = next.child.take();
        self.log = next.log.clone();
    }

    /// Waits until the socket accepts a connection and the daemon has logged
    /// `imaged ready`; panics with the log if the daemon exits or takes
    /// longer than 20 s.
    pub fn wait_ready(&mut self) {
        if let Err(status) = self.ready_or_exit() {
            panic!("imaged exited with {status} before it was ready:\n{}", self.log_text());
        }
    }

    /// The daemon's exit status, once it has stopped on its own.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Waits as [`Daemon::wait_ready`] does, but returns the exit status of
    /// a daemon that stopped before it was ready.
    pub fn ready_or_exit(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // The kernel accepts into the backlog as soon as the socket is
            // bound, before the daemon has logged its start; ready is both.
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() && self.log_text().contains("imaged ready")
            {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(status);
            }
            if Instant::now() >= deadline {
                let pid = self.child.as_ref().unwrap().id();
                panic!(
                    "imaged not ready after 20 s; its threads wait in:\n{}\nits log:\n{}",
                    waiting_in(pid),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A gRPC channel to the daemon.
    pub async fn channel(&self) -> Channel {
        channel(&self.socket).await
    }

    /// A containerd images client.
    pub async fn images(&self) -> imaged_api::containerd::services::images::v1::images_client::ImagesClient<Channel> {
        imaged_api::containerd::services::images::v1::images_client::ImagesClient::new(self.channel().await)
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// A containerd namespaces client.
    pub async fn namespaces(
        &self,
    ) -> imaged_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient<Channel> {
        imaged_api::containerd::services::namespaces::v1::namespaces_client::NamespacesClient::new(self.channel().await)
    }

    /// A seed API client.
    pub async fn seed(&self) -> seed::images_client::ImagesClient<Channel> {
        seed::images_client::ImagesClient::new(self.channel().await).max_decoding_message_size(MAX_MESSAGE)
    }

    /// Sends `signal` and waits for the exit status.
    pub fn signal(&mut self, signal: nix::sys::signal::Signal) -> ExitStatus {
        let mut child = self.child.take().expect("daemon not running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
        wait_timeout(&mut child, Duration::from_secs(30), &self.log)
    }

    /// Sends `signal` without waiting (SIGSTOP, SIGCONT).
    pub fn send(&self, signal: nix::sys::signal::Signal) {
        let pid = self.child.as_ref().expect("daemon not running").id();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
    }

    /// SIGKILL, and wait.
    pub fn kill(&mut self) -> ExitStatus {
        let status = self.signal(nix::sys::signal::Signal::SIGKILL);
        assert_eq!(status.signal(), Some(9));
        status
    }

    /// SIGTERM, and wait.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM)
    }

    /// Waits for a daemon that is expected to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon not running");
        wait_timeout(&mut child, Duration::from_secs(30), &self.log)
    }

    /// The daemon's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("daemon not running").id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The names of the daemon's threads.
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.child.as_ref().expect("daemon not running").id();
        fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|task| fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_owned())
            .collect()
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits up to `within` until the daemon logs a new stall
    /// (`IMAGED_TEST_STALL`); false if none comes.
    pub async fn wait_for_stall(&self, within: Duration) -> bool {
        let before = self.log_text().matches("stalling").count();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log_text().matches("stalling").count() > before {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }
}

/// The flags of a daemon that rotates sled after every MiB journaled, with
/// a small change log so that each copy is short.
pub const ROTATING_OFTEN: [&str; 6] = [
    "--sled-snapshot-mb",
    "1",
    "--rotate-after-percent",
    "1",
    "--keep-changes-mb",
    "2",
];

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, limit: Duration, log: &Path) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let log = fs::read_to_string(log).unwrap_or_default();
            panic!("imaged did not exit within {limit:?}; its log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Where each thread of process `pid` waits (its name and kernel wait
/// channel), for a daemon that hangs.
fn waiting_in(pid: u32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return "(gone)".into();
    };
    tasks
        .flatten()
        .map(|task| {
            let read = |file: &str| fs::read_to_string(task.path().join(file)).unwrap_or_default();
            format!("{} {}", read("comm").trim(), read("wchan").trim())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn unique() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A gRPC channel over the Unix socket at `path`.
pub async fn channel(path: &Path) -> Channel {
    Endpoint::try_from(format!("unix://{}", path.display()))
        .unwrap()
        .connect()
        .await
        .expect("connect to imaged")
}

/// Adds the namespace header to a request.
pub fn in_ns<T>(ns: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    request
}

/// A valid sha256 digest made from `seed`.
pub fn digest(seed: u64) -> String {
    format!("sha256:{:064x}", seed)
}

/// A valid descriptor.
pub fn descriptor(seed: u64) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        digest: digest(seed),
        size: 1000 + seed as i64,
        annotations: Default::default(),
    }
}

/// A seed image named `name` pointing at `descriptor(seed)`.
pub fn image(name: &str, seed: u64) -> seed::Image {
    seed::Image {
        name: name.into(),
        target: Some(descriptor(seed)),
        ..Default::default()
    }
}

/// A Put request for `image(name, seed)`.
pub fn put(name: &str, seed: u64) -> seed::PutRequest {
    seed::PutRequest {
        image: Some(image(name, seed)),
        ..Default::default()
    }
}

/// Restores the backup `file` over the stopped store in `root` with
/// `imaged restore --force`; panics with its output unless it succeeds.
pub fn restore_forced(root: &Path, file: &Path) {
    let out = Command::new(&*IMAGED)
        .env("IMAGED_CONFIG", "/dev/null")
        .args(["restore", "--force", "--root"])
        .arg(root)
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Runs `imaged check` on the stopped store in `root`; panics unless it
/// passes. Returns its report.
pub fn imaged_check(root: &Path) -> String {
    let out = Command::new(&*IMAGED)
        .env("IMAGED_CONFIG", "/dev/null")
        .args(["check", "--root"])
        .arg(root)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "imaged check failed:\n{report}{errors}");
    assert!(report.trim_end().ends_with("ok"), "{report}");
    report
}

/// The names of every image of namespace `ns`, by the seed API's List.
pub async fn names(
    client: &mut seed::images_client::ImagesClient<Channel>,
    ns: &str,
) -> std::collections::BTreeSet<String> {
    let listed = client
        .list(in_ns(ns, seed::ListRequest::default()))
        .await
        .unwrap()
        .into_inner();
    listed.images.into_iter().map(|i| i.name).collect()
}

/// Runs `program args` as `uid` and `gid` with no supplementary groups
/// (`setpriv`, so the caller must be root), from a copy of `program` that
/// user can reach: the build's own directory may not be reachable.
pub fn as_user(uid: u32, gid: u32, program: &Path, args: &[&str]) -> std::process::Output {
    let (_bin, program) = reachable(program);
    setpriv(uid, gid, &program, args)
        .output()
        .expect("setpriv (util-linux)")
}

/// `program`, where any user can run it: a system binary (ctr) where it
/// is, else a copy in a directory kept while the guard lives.
fn reachable(program: &Path) -> (Option<tempfile::TempDir>, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    if program.is_absolute() && program.starts_with("/usr") {
        return (None, program.to_owned());
    }
    let bin = tempfile::tempdir().unwrap();
    fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let copy = bin.path().join(program.file_name().unwrap());
    fs::copy(program, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    (Some(bin), copy)
}

/// The command that runs `program args` as `uid` and `gid`, with no
/// supplementary groups.
fn setpriv(uid: u32, gid: u32, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &gid.to_string(),
            "--clear-groups",
        ])
        .arg(program)
        .args(args);
    command
}

/// Lets every user pass through the temporary directories above `path`
/// (mode 0755), so that only the socket's own mode decides who connects.
pub fn open_path_to_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let temp = std::env::temp_dir();
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.starts_with(&temp) && d != temp {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir = d.parent();
    }
}

/// The Python that can import every one of `modules` (CI's virtualenv has
/// grpcio, grpcio-tools, grpcio-health-checking and grpcio-reflection):
/// `$IMAGED_PYTHON`, the virtualenv CI makes in `target/pyenv`, or
/// `python3`; `None` when none can (never under CI).
pub fn python(modules: &[&str]) -> Option<PathBuf> {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        std::env::var_os("IMAGED_PYTHON").map(PathBuf::from),
        Some(workspace.join("target/pyenv/bin/python")),
        Some(PathBuf::from("python3")),
    ];
    let import = format!("import {}", modules.join(", "));
    for python in candidates.into_iter().flatten() {
        let ok = Command::new(&python)
            .args(["-c", &import])
            .output()
            .is_ok_and(|out| out.status.success());
        if ok {
            return Some(python);
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must provide a Python that can {import} (see .ci/run)"
    );
    skipped(&format!("no Python can {import}"));
    None
}

/// A process running as another uid in the background (see [`spawn_as_user`]),
/// its standard output read line by line; killed when dropped.
pub struct Background {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every line read so far.
    pub said: Vec<String>,
    _bin: Option<tempfile::TempDir>,
}

impl Background {
    /// Waits until a line equal to `line` comes, for at most `within`;
    /// panics with what was said otherwise.
    pub fn wait_for(&mut self, line: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.said.iter().any(|l| l == line) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(next) => self.said.push(next),
                Err(_) => panic!("no {line:?} within {within:?}; it said {:?}", self.said),
            }
        }
    }

    /// What it said, one line each.
    pub fn text(&self) -> String {
        self.said.join("\n")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` as `uid` and `gid` (with no supplementary groups)
/// in the background, from a copy that user can reach, reading its output.
pub fn spawn_as_user(uid: u32, gid: u32, program: &Path, args: &[&str]) -> Background {
    use std::io::BufRead;
    let (bin, copy) = reachable(program);
    let mut child = setpriv(uid, gid, &copy, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("setpriv (util-linux)");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Background {
        child,
        lines,
        said: Vec::new(),
        _bin: bin,
    }
}

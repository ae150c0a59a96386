//! Starting the servers a comparison runs against, on temporary paths, and
//! reading their resident memory and on-disk size.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process started for a run; killed when dropped.
pub struct Server {
    /// Its socket.
    pub socket: PathBuf,
    /// Where it keeps its data.
    pub data: PathBuf,
    child: Option<Child>,
    /// How long it took to accept connections.
    pub startup: Duration,
}

impl Server {
    /// Starts containerd from Debian's package on temporary root, state and
    /// socket paths, with the CRI plugin disabled.
    pub fn containerd(dir: &Path) -> Result<Server, String> {
        let socket = dir.join("containerd.sock");
        let root = dir.join("root");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {root:?}\nstate = {state:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = {socket:?}\n[ttrpc]\n  address = {ttrpc:?}\n",
                state = dir.join("state"),
                ttrpc = dir.join("containerd.sock.ttrpc"),
            ),
        )
        .map_err(|e| e.to_string())?;
        let binary = which("containerd").ok_or("containerd is not installed (apt-get install containerd)")?;
        let mut command = Command::new(binary);
        command.arg("--config").arg(&config);
        Server::start("containerd", command, socket, root, &dir.join("containerd.log"))
    }

    /// Starts the imaged binary at `binary` on temporary paths.
    pub fn imaged(binary: &Path, dir: &Path) -> Result<Server, String> {
        Server::imaged_with(binary, dir, &[])
    }

    /// Starts the imaged binary at `binary` on temporary paths, with the
    /// extra flags `args`.
    pub fn imaged_with(binary: &Path, dir: &Path, args: &[&str]) -> Result<Server, String> {
        Server::imaged_env(binary, dir, args, &[])
    }

    /// Starts the imaged binary as [`Server::imaged_with`] does, with the
    /// environment variables `env` set too.
    pub fn imaged_env(binary: &Path, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Server, String> {
        let socket = dir.join("imaged.sock");
        let data = dir.join("data");
        let mut command = Command::new(binary);
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--root")
            .arg(&data)
            .args(args)
            .env("IMAGED_CONFIG", "/dev/null")
            .env("IMAGED_LOG_LEVEL", "warn")
            .envs(env.iter().copied());
        Server::start("imaged", command, socket, data, &dir.join("imaged.log"))
    }

    /// Starts the null server (`imaged-bench null`, from `binary`) on a
    /// temporary socket; its List answers with `list_size` images. With
    /// `sled`, it is the sled-only server, keeping its writes in that directory.
    pub fn null(binary: &Path, dir: &Path, list_size: u64, sled: Option<PathBuf>) -> Result<Server, String> {
        let (name, file) = match sled {
            Some(_) => ("sled-only server", "sled-only"),
            None => ("null server", "null"),
        };
        let socket = dir.join(format!("{file}.sock"));
        let mut command = Command::new(binary);
        command
            .arg("null")
            .arg("--socket")
            .arg(&socket)
            .arg("--list-size")
            .arg(list_size.to_string());
        if let Some(sled) = &sled {
            command.arg("--sled").arg(sled);
        }
        Server::start(
            name,
            command,
            socket,
            sled.unwrap_or_else(|| dir.join("null-data")),
            &dir.join(format!("{file}.log")),
        )
    }

    fn start(
        name: &'static str,
        mut command: Command,
        socket: PathBuf,
        data: PathBuf,
        log: &Path,
    ) -> Result<Server, String> {
        let log = std::fs::File::create(log).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting {name}: {e}"))?;
        let mut server = Server {
            socket,
            data,
            child: Some(child),
            startup: Duration::ZERO,
        };
        while std::os::unix::net::UnixStream::connect(&server.socket).is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("{name} did not start within 60 s"));
            }
            if let Some(status) = server.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(format!("{name} exited with {status}"));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        server.startup = started.elapsed();
        Ok(server)
    }

    /// Resident memory of the process, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let Some(child) = &self.child else { return 0.0 };
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0)
    }

    /// CPU time (user and system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let Some(child) = &self.child else {
            return Duration::ZERO;
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        // Fields after the command's closing parenthesis; utime and stime
        // are the 14th and 15th of the whole line, in clock ticks.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        let ticks = field(11) + field(12);
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        Duration::from_secs_f64(ticks as f64 / per_second as f64)
    }

    /// Bytes on disk under the data directory (allocated blocks), in MiB.
    pub fn disk_mib(&self) -> f64 {
        disk_mib(&self.data)
    }

    /// Stops the server with SIGTERM and waits.
    pub fn stop(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(binary))
        .find(|p| p.is_file())
}

/// The disk space the files under `dir` occupy (allocated blocks, not
/// lengths), in MiB.
pub fn disk_mib(dir: &Path) -> f64 {
    fn walk(dir: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.blocks() * 512,
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir) as f64 / (1 << 20) as f64
}

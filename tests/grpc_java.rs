//! grpc-java against the real daemon: `tests/java/VersionCall.java`, built
//! with javac against Debian's grpc-java (1.41, Netty transport, default
//! channel options), calls containerd's Version and namespaces List.
//!
//! Debian's Netty has no native epoll, which grpc-java needs to dial a Unix
//! socket, so the client reaches the daemon's socket through `socat`, a
//! byte-for-byte TCP relay, and sends as `:authority` what grpc-java sends
//! on a Unix socket: the socket's path (grpc-java #12664). `h2` refuses a
//! `/` there, and every call failed with RST_STREAM PROTOCOL_ERROR until
//! imaged rewrote it; a daemon with the rewrite turned off still fails, which
//! the test shows too.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, have_tool, output_text};

/// Debian's grpc-java and what it needs at run time, in /usr/share/java.
const JARS: [&str; 17] = [
    "grpc-api",
    "grpc-core",
    "grpc-netty",
    "grpc-context",
    "grpc-stub",
    "guava",
    "perfmark-api",
    "netty-buffer",
    "netty-codec",
    "netty-codec-http",
    "netty-codec-http2",
    "netty-common",
    "netty-handler",
    "netty-resolver",
    "netty-transport",
    "error_prone_annotations",
    "jsr305",
];

/// The jars' class path, or `None` (a panic under CI) when one is missing.
fn class_path() -> Option<String> {
    let jars: Vec<PathBuf> = JARS
        .iter()
        .map(|j| Path::new("/usr/share/java").join(format!("{j}.jar")))
        .collect();
    if let Some(missing) = jars.iter().find(|j| !j.exists()) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{} is missing; .ci/run installs libgrpc-java, libnetty-java and libperfmark-java",
            missing.display()
        );
        eprintln!(
            "SKIPPED: {} is missing (apt-get install libgrpc-java libperfmark-java)",
            missing.display()
        );
        return None;
    }
    Some(jars.iter().map(|j| j.to_string_lossy()).collect::<Vec<_>>().join(":"))
}

/// `socat` relaying a loopback TCP port to `socket`; killed when dropped.
struct Relay {
    child: Child,
    port: u16,
}

impl Relay {
    fn to(socket: &Path) -> Relay {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("UNIX-CONNECT:{}", socket.display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("start socat");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "socat is not listening on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Relay { child, port }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn grpc_java_calls_with_the_authority_it_sends_on_a_unix_socket() {
    if !have_tool("javac", "openjdk-17-jdk-headless") || !have_tool("socat", "socat") {
        return;
    }
    let Some(jars) = class_path() else { return };
    let classes = tempfile::tempdir().unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/java/VersionCall.java");
    let built = Command::new("javac")
        .arg("-cp")
        .arg(&jars)
        .arg("-d")
        .arg(classes.path())
        .arg(&source)
        .output()
        .unwrap();
    assert!(built.status.success(), "javac: {}", output_text(&built));
    let class_path = format!("{jars}:{}", classes.path().display());
    let call = |relay: &Relay, authority: &str| {
        let out = Command::new("java")
            .arg("-cp")
            .arg(&class_path)
            .arg("VersionCall")
            .arg("127.0.0.1")
            .arg(relay.port.to_string())
            .arg(authority)
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    };

    let daemon = Daemon::start();
    let relay = Relay::to(&daemon.socket);
    let path = daemon.socket.to_string_lossy().into_owned();
    // What grpc-java sends on a Unix socket; what gRPC's C core sends; and
    // a host name, which needs no rewrite.
    let percent = path.trim_start_matches('/').replace('/', "%2F");
    for authority in [path.as_str(), percent.as_str(), "localhost"] {
        let (ok, text) = call(&relay, authority);
        assert!(ok, "authority {authority}: {text}");
        let expected = format!("version {}\nnamespaces 0\n", env!("CARGO_PKG_VERSION"));
        assert_eq!(text, expected, "authority {authority}");
    }

    // The control: without the rewrite, h2 resets the stream.
    let plain = Daemon::start_env(&[("IMAGED_BENCH_NO_AUTHORITY_FIX", "1")]);
    let relay = Relay::to(&plain.socket);
    let (ok, text) = call(&relay, &plain.socket.to_string_lossy());
    assert!(!ok && text.contains("PROTOCOL_ERROR"), "{text}");
    let (ok, text) = call(&relay, "localhost");
    assert!(ok, "{text}");
}

//! The operator's commands: `health` (an exec probe), `status`, `backup`
//! and `compact`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imaged_client::{Client, DaemonStatus, Error};

use crate::output;

/// How long `imagectl health` waits when no `--timeout` is given: a probe
/// must answer, not hang.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// `imagectl health`: prints SERVING or NOT_SERVING and answers whether
/// the daemon serves `service`; an unreachable daemon is not serving.
pub async fn health(client: &Client, service: &str) -> bool {
    match client.health(service).await {
        Ok(true) => {
            println!("SERVING");
            true
        }
        Ok(false) => {
            println!("NOT_SERVING");
            false
        }
        Err(e) => {
            println!("NOT_SERVING");
            eprintln!("imagectl: {e}");
            false
        }
    }
}

/// `imagectl status`, as a table or as JSON.
pub async fn status(client: &Client, json: bool) -> Result<(), Error> {
    let status = client.status().await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status_json(&status)).expect("JSON"));
        return Ok(());
    }
    let rows = vec![
        vec![
            "version".into(),
            format!("{} (git {})", status.version, status.git_revision),
        ],
        vec!["uptime".into(), format!("{}s", status.uptime.as_secs())],
        vec!["revision".into(), status.revision.to_string()],
        vec!["compacted revision".into(), status.compacted_revision.to_string()],
        vec!["images".into(), status.images.to_string()],
        vec!["namespaces".into(), status.namespaces.len().to_string()],
        vec!["journal bytes".into(), status.journal_bytes.to_string()],
        vec!["engine bytes".into(), status.engine_bytes.to_string()],
        vec!["watchers".into(), status.watchers.to_string()],
        vec!["writable".into(), status.writable.to_string()],
        vec!["rotating".into(), status.rotating.to_string()],
        vec!["rotations".into(), status.rotations.to_string()],
        vec![
            "rotations abandoned".into(),
            match status.rotations_abandoned {
                0 => "0".into(),
                n => format!("{n} (last: {})", status.last_rotation_abandoned),
            },
        ],
        vec!["uuid".into(), status.uuid.clone()],
    ];
    output::print_table(&["FIELD", "VALUE"], &rows);
    println!();
    let namespaces: Vec<Vec<String>> = status
        .namespaces
        .iter()
        .map(|(name, images)| vec![name.clone(), images.to_string()])
        .collect();
    output::print_table(&["NAMESPACE", "IMAGES"], &namespaces);
    println!();
    let limits: Vec<Vec<String>> = status
        .limits
        .iter()
        .map(|(k, v)| vec![k.clone(), v.clone(), unit(k).to_owned()])
        .collect();
    output::print_table(&["LIMIT", "VALUE", "UNIT"], &limits);
    Ok(())
}

/// The unit of a limit, from its configuration key's ending (before any
/// `_per_uid`), the naming rule of every setting (docs/CONFIGURATION.md);
/// a count has none.
fn unit(key: &str) -> &'static str {
    let key = key.strip_suffix("_per_uid").unwrap_or(key);
    const ENDINGS: [(&str, &str); 7] = [
        ("_mb", "MiB"),
        ("_kb", "KiB"),
        ("_ms", "ms"),
        ("_percent", "%"),
        ("_timeout", "s"),
        ("_grace", "s"),
        ("_for", "s"),
    ];
    ENDINGS
        .iter()
        .find(|(ending, _)| key.ends_with(ending))
        .map_or("", |(_, unit)| unit)
}

/// `imagectl compact`: rotates the store and says what it gave back.
pub async fn compact(client: &Client, json: bool) -> Result<(), Error> {
    let c = client.compact().await?;
    if json {
        let json = serde_json::json!({
            "before_bytes": c.before_bytes,
            "after_bytes": c.after_bytes,
            "keys": c.keys,
            "copy_ms": c.copy.as_millis() as u64,
            "open_ms": c.open.as_millis() as u64,
            "paused_ms": c.paused.as_millis() as u64,
            "took_ms": c.took.as_millis() as u64,
        });
        println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        return Ok(());
    }
    let rows = vec![
        vec!["bytes before".into(), c.before_bytes.to_string()],
        vec!["bytes after".into(), c.after_bytes.to_string()],
        vec!["entries copied".into(), c.keys.to_string()],
        vec!["copy".into(), format!("{} ms", c.copy.as_millis())],
        vec!["first open".into(), format!("{} ms", c.open.as_millis())],
        vec!["writes paused".into(), format!("{} ms", c.paused.as_millis())],
        vec!["took".into(), format!("{} ms", c.took.as_millis())],
    ];
    output::print_table(&["FIELD", "VALUE"], &rows);
    Ok(())
}

fn status_json(s: &DaemonStatus) -> serde_json::Value {
    let namespaces: serde_json::Map<String, serde_json::Value> = s
        .namespaces
        .iter()
        .map(|(name, n)| (name.clone(), (*n).into()))
        .collect();
    let limits: serde_json::Map<String, serde_json::Value> =
        s.limits.iter().map(|(k, v)| (k.clone(), v.clone().into())).collect();
    serde_json::json!({
        "version": s.version,
        "git_revision": s.git_revision,
        "uptime_seconds": s.uptime.as_secs(),
        "revision": s.revision,
        "compacted_revision": s.compacted_revision,
        "images": s.images,
        "namespaces": namespaces,
        "journal_bytes": s.journal_bytes,
        "engine_bytes": s.engine_bytes,
        "watchers": s.watchers,
        "writable": s.writable,
        "rotating": s.rotating,
        "rotations": s.rotations,
        "rotations_abandoned": s.rotations_abandoned,
        "last_rotation_abandoned": s.last_rotation_abandoned,
        "uuid": s.uuid,
        "limits": limits,
    })
}

/// Creates `partial`, a backup being written: a new file (never one that
/// exists, never through a link, so a file or link another user planted in
/// a shared directory cannot receive the backup), which only its owner may
/// read, since it holds every image and label. A leftover of an interrupted
/// backup of ours, a plain file we own, is replaced; anything else there is
/// refused, named.
fn create_partial(partial: &Path) -> std::io::Result<tokio::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(partial)
    };
    let file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let found = std::fs::symlink_metadata(partial)?;
            // SAFETY: geteuid takes nothing and cannot fail.
            let ours = found.file_type().is_file() && found.uid() == unsafe { libc::geteuid() };
            if !ours {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "it exists and is not a leftover of ours ({}, owned by uid {}); remove it, or write the \
                         backup elsewhere",
                        if found.file_type().is_symlink() {
                            "a symbolic link"
                        } else {
                            "not our plain file"
                        },
                        found.uid()
                    ),
                ));
            }
            std::fs::remove_file(partial)?;
            create()?
        }
        other => other?,
    };
    // Whatever the umask let through, only the owner reads it.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(tokio::fs::File::from_std(file))
}

/// `imagectl backup`: the backup file to `output`, or to standard output
/// (never a terminal). A file is written beside its name first and renamed
/// once whole, so `output` is never a partial backup.
pub async fn backup(client: &Client, output: Option<PathBuf>) -> Result<(), Error> {
    let local =
        |what: &str, path: &Path, e: std::io::Error| Error::Transport(format!("{what} {}: {e}", path.display()));
    let Some(path) = output else {
        if std::io::stdout().is_terminal() {
            return Err(Error::InvalidArgument(
                "the backup is binary: redirect standard output to a file (imagectl backup > FILE), or give -o FILE"
                    .into(),
            ));
        }
        let bytes = client.backup(&mut tokio::io::stdout()).await?;
        eprintln!("imagectl: wrote a backup of {bytes} bytes");
        return Ok(());
    };
    let partial = PathBuf::from(format!("{}.partial", path.display()));
    let mut file = create_partial(&partial).map_err(|e| local("creating", &partial, e))?;
    let written = client.backup(&mut file).await;
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    file.sync_all().await.map_err(|e| local("syncing", &partial, e))?;
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(|e| local("renaming", &partial, e))?;
    // The rename is durable only once the directory holding both names is
    // synced: a power cut could otherwise leave the partial file, or none.
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    tokio::fs::File::open(&dir)
        .await
        .map_err(|e| local("opening", &dir, e))?
        .sync_all()
        .await
        .map_err(|e| local("syncing", &dir, e))?;
    eprintln!("imagectl: wrote a backup of {bytes} bytes to {}", path.display());
    Ok(())
}

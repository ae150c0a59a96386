//! imaged-client against the real daemon: connecting before the daemon starts
//! and across a restart, typed calls and errors, conditional writes and their
//! race, lists and streams, labels, namespaces and timeouts.

mod common;

use std::time::Duration;

use common::{Daemon, digest};
use futures_util::TryStreamExt;
use imaged_client::{Client, Descriptor, Digest, Error, LabelChange, Labels};

fn target(n: u64) -> Descriptor {
    Descriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: digest(n).parse().unwrap(),
        size: 100 + n as i64,
        annotations: Labels::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_made_before_the_daemon_reconnects_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("imaged.sock");
    let client = Client::connect(&socket).unwrap();
    let images = client.namespace("default").unwrap();

    // No daemon yet: reads retry, then say so, naming the socket.
    let err = images.get("x").await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(err.to_string().contains(&socket.display().to_string()), "{err}");
    // Writes are not retried, and fail the same way.
    assert!(images.put("x", target(1)).await.unwrap_err().is_unavailable());

    let mut daemon = Daemon::spawn(&socket, &dir.path().join("data"));
    daemon.wait_ready();
    images.put("x", target(1)).await.unwrap();
    assert_eq!(images.get("x").await.unwrap().target, target(1));

    // Across a restart the same client carries on; the read retries cover
    // the gap.
    tokio::task::block_in_place(|| assert!(daemon.terminate().success()));
    daemon.restart();
    assert_eq!(images.get("x").await.unwrap().target, target(1));
    images.put("y", target(2)).await.unwrap();
}

#[tokio::test]
async fn typed_calls_and_errors() {
    let daemon = Daemon::start();
    let client = Client::connect(&daemon.socket).unwrap();
    let images = client.namespace("k8s.io").unwrap();

    images.put("redis:7", target(1)).label("env", "prod").await.unwrap();
    let image = images.get("redis:7").await.unwrap();
    assert_eq!(image.name, "redis:7");
    assert_eq!(image.target, target(1));
    assert_eq!(image.labels.get("env").map(String::as_str), Some("prod"));
    assert!(image.created_at > std::time::UNIX_EPOCH && image.updated_at >= image.created_at);

    let err = images.get("nope").await.unwrap_err();
    assert!(err.is_not_found());
    assert_eq!(err.to_string(), "image \"nope\" not found in namespace \"k8s.io\"");
    let err = images.delete("nope").await.unwrap_err();
    assert!(err.is_not_found());

    // A Digest can only hold a valid digest; the server refuses the rest.
    assert!("sha256:abc".parse::<Digest>().is_err());
    let mut bad = target(1);
    bad.media_type = "nonsense".into();
    let err = images.put("x", bad).await.unwrap_err();
    assert!(
        err.is_invalid_argument() && err.to_string().contains("image.target.media_type"),
        "{err}"
    );
    assert!(matches!(client.namespace("bad/ns"), Err(Error::InvalidArgument(_))));

    // Another namespace is another set of images.
    assert!(
        client
            .namespace("default")
            .unwrap()
            .get("redis:7")
            .await
            .unwrap_err()
            .is_not_found()
    );

    let labelled = images
        .label("redis:7", [LabelChange::set("team", "a"), LabelChange::remove("env")])
        .await
        .unwrap();
    assert_eq!(labelled.labels.keys().collect::<Vec<_>>(), ["team"]);
    images.delete("redis:7").await.unwrap();
    assert!(images.get("redis:7").await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn conditional_writes() {
    let daemon = Daemon::start();
    let images = Client::connect(&daemon.socket).unwrap().namespace("default").unwrap();
    images.put("a", target(1)).if_absent().await.unwrap();

    let err = images.put("a", target(2)).if_absent().await.unwrap_err();
    assert!(err.is_aborted(), "{err:?}");
    assert!(
        err.to_string().contains("already exists") && err.to_string().contains(&digest(1)),
        "{err}"
    );

    let d2: Digest = digest(2).parse().unwrap();
    let d1: Digest = digest(1).parse().unwrap();
    let err = images.put("a", target(3)).if_digest(&d2).await.unwrap_err();
    assert!(err.is_aborted());
    assert!(
        err.to_string()
            .contains(&format!("points at {}, not {}", digest(1), digest(2))),
        "{err}"
    );
    images.put("a", target(3)).if_digest(&d1).await.unwrap();
    assert_eq!(images.get("a").await.unwrap().target, target(3));

    let err = images.put("never", target(1)).if_digest(&d1).await.unwrap_err();
    assert!(err.is_aborted() && err.to_string().contains("does not exist"), "{err}");

    let err = images.delete("a").if_digest(&d1).await.unwrap_err();
    assert!(err.is_aborted());
    assert!(
        images.get("a").await.is_ok(),
        "a failed conditional delete deletes nothing"
    );
    images.delete("a").if_digest(&digest(3).parse().unwrap()).await.unwrap();
    assert!(images.get("a").await.unwrap_err().is_not_found());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_if_absent_puts_exactly_one_wins() {
    let daemon = Daemon::start();
    let client = Client::connect(&daemon.socket).unwrap();
    for round in 0..5 {
        let name = format!("contended-{round}");
        let mut tasks = Vec::new();
        for n in 1..=16u64 {
            let images = client.namespace("default").unwrap();
            let name = name.clone();
            tasks.push(tokio::spawn(async move {
                (n, images.put(name, target(n)).if_absent().await)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (n, Ok(())) => winners.push(n),
                (_, Err(e)) => assert!(e.is_aborted(), "{e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let stored = client.namespace("default").unwrap().get(&name).await.unwrap();
        assert_eq!(stored.target, target(winners[0]));
    }
}

#[tokio::test]
async fn lists_pages_and_lazy_streams() {
    let daemon = Daemon::start();
    let images = Client::connect(&daemon.socket).unwrap().namespace("default").unwrap();
    for n in 0..25u64 {
        let env = if n % 2 == 0 { "prod" } else { "dev" };
        images
            .put(format!("img-{n:02}"), target(n + 1))
            .label("env", env)
            .await
            .unwrap();
    }

    let page = images
        .list()
        .filter("labels.env==prod")
        .order_by("name desc")
        .page_size(5)
        .page()
        .await
        .unwrap();
    let names: Vec<_> = page.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["img-24", "img-22", "img-20", "img-18", "img-16"]);
    let token = page.next_page_token.expect("more pages");
    let next = images
        .list()
        .filter("labels.env==prod")
        .order_by("name desc")
        .page_size(5)
        .page_token(token)
        .page()
        .await
        .unwrap();
    assert_eq!(next.images[0].name, "img-14");

    let all: Vec<_> = images.list_all().try_collect().await.unwrap();
    assert_eq!(all.len(), 25);
    assert!(all.windows(2).all(|w| w[0].name < w[1].name));
    let big: Vec<_> = images
        .list()
        .filter("target.size>=120")
        .page_size(2)
        .all()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        big.iter().map(|i| i.target.size).collect::<Vec<_>>(),
        [120, 121, 122, 123, 124, 125]
    );

    // Errors arrive as the stream's first item.
    let err = images
        .list()
        .filter("nmae==x")
        .all()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(
        err.is_invalid_argument() && err.to_string().contains("unknown field"),
        "{err}"
    );
}

#[tokio::test]
async fn namespaces_version_and_timeouts() {
    let daemon = Daemon::start();
    let client = Client::connect(&daemon.socket).unwrap();
    client.create_namespace("team-a", Labels::new()).await.unwrap();
    assert!(
        client
            .create_namespace("team-a", Labels::new())
            .await
            .unwrap_err()
            .is_already_exists()
    );
    client.namespace("busy").unwrap().put("x", target(1)).await.unwrap();
    let names: Vec<_> = client
        .namespaces()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name.to_string())
        .collect();
    assert_eq!(names, ["busy", "team-a"]);
    let err = client.delete_namespace("busy").await.unwrap_err();
    assert!(matches!(err, Error::FailedPrecondition(_)), "{err:?}");
    client.delete_namespace("team-a").await.unwrap();

    let imaged_client::Version { version, revision } = client.version().await.unwrap();
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert!(!revision.is_empty());

    // A stopped daemon accepts (the kernel queues) but never answers.
    let hasty = Client::builder(&daemon.socket)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    daemon.send(nix::sys::signal::Signal::SIGSTOP);
    let err = hasty.namespace("default").unwrap().get("x").await.unwrap_err();
    daemon.send(nix::sys::signal::Signal::SIGCONT);
    assert!(err.is_timeout(), "{err:?}");
    let err = hasty.namespace("default").unwrap().get("x").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

/// The README's program (the `readme` example, which `cargo test` builds)
/// runs as shown against a daemon found through `$IMAGED_ADDRESS`.
#[test]
fn the_readme_program_runs() {
    let exe = std::env::current_exe().unwrap();
    let example = exe.parent().unwrap().parent().unwrap().join("examples/readme");
    assert!(
        example.exists(),
        "{} is not built; run the tests with `cargo test --workspace`, which builds the examples",
        example.display()
    );
    let daemon = Daemon::start();
    let out = std::process::Command::new(&example)
        .env("IMAGED_ADDRESS", &daemon.socket)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("docker.io/library/redis:7 -> sha256:4c5f"), "{text}");
    assert!(text.contains("page: 1, redis: 1, repositories: 1, in all: 1"), "{text}");
    assert!(text.contains("1 change(s)"), "{text}");
}

/// An error reads as words: its Debug (what `main` prints when it returns
/// `Err`) is its kind and message, and a refused digest quotes itself.
#[test]
fn errors_read_as_words_and_quote_a_refused_digest() {
    let err: Error = "sha256:abc".parse::<Digest>().unwrap_err().into();
    assert_eq!(
        format!("{err:?}"),
        "InvalidArgument: \"sha256:abc\" is not a digest: sha256 needs 64 lowercase hex characters"
    );
}

//! Protected images, end to end through the real daemon: the seed API's
//! `protected` field and containerd's pin label are one protection; every
//! API refuses to delete or retarget a protected image, every read shows
//! it, Watch reports its changes, and a backup keeps it.

mod common;

use common::{Daemon, digest, image, in_ns};
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::services::namespaces::v1 as ctrd_ns;
use imaged_api::containerd::v1 as seed;
use seed::watch_event::Type;
use tokio_stream::StreamExt;
use tonic::Code;

const PIN: &str = "io.cri-containerd.pinned";

/// A seed Put of `name` at digest `n`, protecting or not as `protected`
/// says, with `labels`.
fn put(name: &str, n: u64, protected: Option<bool>, labels: &[(&str, &str)]) -> seed::PutRequest {
    let mut image = image(name, n);
    image.protected = protected;
    image.labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    seed::PutRequest {
        image: Some(image),
        precondition: None,
    }
}

fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, what: &str) -> String {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::FailedPrecondition, "{what}: {status:?}");
    assert!(status.message().contains("is protected"), "{what}: {status:?}");
    status.message().to_owned()
}

async fn get(seed: &mut seed::images_client::ImagesClient<tonic::transport::Channel>, name: &str) -> seed::Image {
    seed.get(seed::GetRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
}

#[tokio::test]
async fn every_api_refuses_to_delete_or_retarget_a_protected_image_and_every_read_shows_it() {
    let daemon = Daemon::start();
    let mut seed = daemon.seed().await;
    let mut ctrd = daemon.images().await;
    seed.put(put("plain", 1, None, &[])).await.unwrap();
    seed.put(put("kept", 2, Some(true), &[("env", "prod")])).await.unwrap();
    let start = get(&mut seed, "kept").await.mod_revision;

    // Every read shows it: Get, a whole list, a page, a stream, containerd.
    assert_eq!(get(&mut seed, "kept").await.protected, Some(true));
    assert_eq!(get(&mut seed, "plain").await.protected, None);
    let whole = seed.list(seed::ListRequest::default()).await.unwrap().into_inner();
    let paged = seed
        .list(seed::ListRequest {
            page_size: 1,
            filters: vec!["protected==true".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    let mut stream = seed
        .list_stream(seed::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    while let Some(page) = stream.next().await {
        streamed.extend(page.unwrap().images);
    }
    for images in [&whole.images, &streamed] {
        let shown: Vec<_> = images.iter().map(|i| (i.name.as_str(), i.protected)).collect();
        assert_eq!(shown, [("kept", Some(true)), ("plain", None)]);
    }
    assert_eq!(paged.images.len(), 1);
    assert_eq!(paged.images[0].name, "kept");
    let on_containerd = ctrd
        .get(in_ns("default", ctrd::GetImageRequest { name: "kept".into() }))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(on_containerd.labels.get(PIN).map(String::as_str), Some("pinned"));

    // Every way to remove it or move it is refused, naming it.
    let text = refused(
        seed.delete(seed::DeleteRequest {
            name: "kept".into(),
            precondition: None,
        })
        .await,
        "seed Delete",
    );
    assert!(text.contains("\"kept\""), "{text}");
    refused(seed.put(put("kept", 3, None, &[])).await, "seed Put of another target");
    refused(
        seed.put(put("kept", 3, Some(false), &[])).await,
        "seed Put that unprotects and retargets at once",
    );
    refused(
        ctrd.delete(in_ns(
            "default",
            ctrd::DeleteImageRequest {
                name: "kept".into(),
                sync: false,
                target: None,
            },
        ))
        .await,
        "containerd Delete",
    );
    let mut moved = on_containerd.clone();
    moved.target.as_mut().unwrap().digest = digest(4);
    refused(
        ctrd.update(in_ns(
            "default",
            ctrd::UpdateImageRequest {
                image: Some(moved),
                update_mask: None,
                source_date_epoch: None,
            },
        ))
        .await,
        "containerd Update of the target",
    );
    let ns = daemon
        .namespaces()
        .await
        .delete(in_ns(
            "default",
            ctrd_ns::DeleteNamespaceRequest { name: "default".into() },
        ))
        .await
        .expect_err("namespace delete");
    assert_eq!(ns.code(), Code::FailedPrecondition, "{ns:?}");
    assert!(ns.message().contains("must be unprotected"), "{}", ns.message());

    // Labels still change, and a Put that replaces them keeps the
    // protection unless it says otherwise.
    seed.put(put("kept", 2, None, &[("env", "test")])).await.unwrap();
    let relabeled = get(&mut seed, "kept").await;
    assert_eq!(relabeled.protected, Some(true));
    assert_eq!(relabeled.labels.get("env").map(String::as_str), Some("test"));
    seed.put(put("kept", 2, Some(false), &[])).await.unwrap();
    assert_eq!(get(&mut seed, "kept").await.protected, None);
    seed.delete(seed::DeleteRequest {
        name: "kept".into(),
        precondition: None,
    })
    .await
    .unwrap();

    // Watch reported each change of protection as a modification.
    let request = seed::WatchRequest {
        start_revision: Some(start - 1),
        prev_image: true,
        ..Default::default()
    };
    let mut watch = seed.watch(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while events.len() < 4 {
        events.extend(watch.next().await.unwrap().unwrap().events);
    }
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.r#type(),
                e.image.as_ref().and_then(|i| i.protected),
                e.prev_image.as_ref().and_then(|i| i.protected),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (Type::Added, Some(true), None),
            (Type::Modified, Some(true), Some(true)),
            (Type::Modified, None, Some(true)),
            (Type::Deleted, None, None),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_keeps_protection() {
    let mut daemon = Daemon::start();
    let mut seed = daemon.seed().await;
    seed.put(in_ns("team", put("kept", 1, Some(true), &[]))).await.unwrap();
    let file = daemon.root.parent().unwrap().join("backup");
    let mut bytes = Vec::new();
    let client = imaged_client::Client::connect(&daemon.socket).unwrap();
    client.backup(&mut bytes).await.unwrap();
    std::fs::write(&file, bytes).unwrap();
    // Gone after the backup; back, protected, after the restore.
    let images = client.namespace("team").unwrap();
    images.unprotect("kept").await.unwrap();
    images.delete("kept").await.unwrap();
    tokio::task::block_in_place(|| assert!(daemon.terminate().success()));
    common::restore_forced(&daemon.root, &file);
    daemon.restart();
    let client = imaged_client::Client::connect(&daemon.socket).unwrap();
    let images = client.namespace("team").unwrap();
    assert!(images.get("kept").await.unwrap().protected());
    let refused = images.delete("kept").await.expect_err("delete after the restore");
    assert!(refused.to_string().contains("is protected"), "{refused}");
}

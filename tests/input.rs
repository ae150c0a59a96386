//! Input that must get a clear answer through the real daemon: bytes that
//! are not UTF-8 where a string belongs, control characters in label keys,
//! times imaged cannot store, and a record too large to journal, which is
//! refused alone while every other write goes on.

mod common;

use common::{Daemon, descriptor, in_ns};
use imaged_api::codec::ArgumentCodec;
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::services::namespaces::v1 as ctrd_ns;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;

/// A request whose string field `tag` carries raw bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawField {
    #[prost(bytes = "vec", tag = "1")]
    value: Vec<u8>,
}

/// Calls `path` with field 1 set to `bytes`, in namespace `default`.
async fn call_raw(daemon: &Daemon, path: &'static str, bytes: Vec<u8>) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(daemon.channel().await);
    grpc.ready().await.unwrap();
    let request = in_ns("default", RawField { value: bytes });
    grpc.unary::<_, (), _>(request, PathAndQuery::from_static(path), ArgumentCodec::default())
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_are_not_utf8_are_invalid_argument_naming_the_field() {
    let daemon = Daemon::start();
    let not_utf8 = vec![b'a', 0xff, 0xfe, b'b'];
    for (path, field) in [
        ("/containerd.v1.Images/Get", "GetRequest.name"),
        ("/containerd.v1.Images/Delete", "DeleteRequest.name"),
        ("/containerd.services.images.v1.Images/Get", "GetImageRequest.name"),
        (
            "/containerd.services.namespaces.v1.Namespaces/Get",
            "GetNamespaceRequest.name",
        ),
    ] {
        let status = call_raw(&daemon, path, not_utf8.clone()).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(status.message().contains(field), "{path}: {status:?}");
        assert!(status.message().contains("UTF-8"), "{path}: {status:?}");
    }
    // The daemon serves on.
    let mut seed = daemon.seed().await;
    seed.put(common::put("after", 1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_label_keys_and_unstorable_times_are_refused() {
    let daemon = Daemon::start();
    let mut seed = daemon.seed().await;
    let mut put = common::put("ctl", 1);
    put.image
        .as_mut()
        .unwrap()
        .labels
        .insert("bad\u{1b}[31mkey".into(), "v".into());
    let status = seed.put(put).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("control characters"), "{status:?}");
    // Values may hold any UTF-8, control characters included.
    let mut put = common::put("ctl", 1);
    put.image
        .as_mut()
        .unwrap()
        .labels
        .insert("key".into(), "line\nbreak\u{7}".into());
    seed.put(put).await.unwrap();

    let mut images = ctrd::images_client::ImagesClient::new(daemon.channel().await);
    let create = |seconds: i64| ctrd::CreateImageRequest {
        image: Some(ctrd::Image {
            name: format!("far/{seconds}"),
            target: Some(descriptor(2)),
            ..Default::default()
        }),
        source_date_epoch: Some(prost_types::Timestamp { seconds, nanos: 0 }),
    };
    for seconds in [i64::MAX, 10_000_000_000, -1] {
        let status = images.create(in_ns("default", create(seconds))).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{seconds}: {status:?}");
        assert!(status.message().contains("source_date_epoch"), "{status:?}");
    }
    // The last second imaged stores is taken, and answered as given.
    let last = i64::MAX / 1_000_000_000 - 1;
    let made = images
        .create(in_ns("default", create(last)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.image.unwrap().created_at.unwrap().seconds, last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_too_large_to_journal_is_refused_alone() {
    let daemon = Daemon::start();
    let mut namespaces = ctrd_ns::namespaces_client::NamespacesClient::new(daemon.channel().await)
        .max_decoding_message_size(common::MAX_MESSAGE)
        .max_encoding_message_size(common::MAX_MESSAGE);
    // 8 MiB of labels, each within the 4 KiB bound: more than one journal
    // holds. It once failed the journal write and fenced every writer.
    let labels = (0..2048).map(|i| (format!("k{i:04}"), "v".repeat(4000))).collect();
    let huge = ctrd_ns::CreateNamespaceRequest {
        namespace: Some(ctrd_ns::Namespace {
            name: "huge".into(),
            labels,
        }),
    };
    let status = namespaces.create(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("namespace.labels"), "{status:?}");
    assert!(status.message().contains("65536"), "{status:?}");
    // Everyone else writes on.
    let mut seed = daemon.seed().await;
    seed.put(common::put("still-writable", 3)).await.unwrap();
    namespaces
        .create(ctrd_ns::CreateNamespaceRequest {
            namespace: Some(ctrd_ns::Namespace {
                name: "small".into(),
                labels: [("a".to_string(), "b".to_string())].into(),
            }),
        })
        .await
        .unwrap();
}

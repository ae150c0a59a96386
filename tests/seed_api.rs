//! End-to-end tests of the seed API (`containerd.v1.Images`) against the real
//! daemon: round trips, replacement, NOT_FOUND, ordering, namespaces, and
//! every validation rule with the field it names.

mod common;

use common::{Daemon, descriptor, digest, image, in_ns, put};
use imaged_api::containerd::v1::{DeleteRequest, GetRequest, ListRequest, PutRequest};
use tonic::Code;

/// The image without the times the server sets, after checking they are set.
fn without_times(image: Option<imaged_api::containerd::v1::Image>) -> Option<imaged_api::containerd::v1::Image> {
    image.map(|mut i| {
        assert!(
            i.created_at.is_some() && i.updated_at.is_some(),
            "the server sets both times"
        );
        assert!(
            i.create_revision > 0 && i.mod_revision >= i.create_revision,
            "the server sets both revisions"
        );
        i.created_at = None;
        i.updated_at = None;
        i.create_revision = 0;
        i.mod_revision = 0;
        i
    })
}

fn names(list: &imaged_api::containerd::v1::ListResponse) -> Vec<String> {
    list.images.iter().map(|i| i.name.clone()).collect()
}

#[tokio::test]
async fn put_then_get_round_trips_the_whole_descriptor() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let mut img = image("docker.io/library/redis:7", 1);
    let target = img.target.as_mut().unwrap();
    target.media_type = "application/vnd.docker.distribution.manifest.list.v2+json".into();
    target.digest = format!("sha512:{}", "ab".repeat(64));
    target.size = 1 << 40;
    target
        .annotations
        .insert("org.opencontainers.image.ref.name".into(), "7".into());
    client
        .put(PutRequest {
            image: Some(img.clone()),
            ..Default::default()
        })
        .await
        .unwrap();

    let got = client
        .get(GetRequest { name: img.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(without_times(got.image), Some(img));
}

#[tokio::test]
async fn put_replaces_the_target_of_an_existing_name() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    client.put(put("redis:7", 1)).await.unwrap();
    client.put(put("redis:7", 2)).await.unwrap();

    let got = client
        .get(GetRequest { name: "redis:7".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.image.unwrap().target.unwrap().digest, digest(2));
    let list = client.list(ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(names(&list), ["redis:7"]);
}

#[tokio::test]
async fn get_and_delete_of_an_absent_name_are_not_found_naming_it() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let err = client.get(GetRequest { name: "nope:1".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("\"nope:1\""), "{}", err.message());
    assert!(err.message().contains("\"default\""), "{}", err.message());

    let err = client
        .delete(DeleteRequest {
            name: "nope:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("\"nope:1\""), "{}", err.message());
}

#[tokio::test]
async fn delete_removes_the_image() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    client.put(put("a", 1)).await.unwrap();
    client.put(put("b", 2)).await.unwrap();
    client
        .delete(DeleteRequest {
            name: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let err = client.get(GetRequest { name: "a".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let list = client.list(ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(names(&list), ["b"]);
    let err = client
        .delete(DeleteRequest {
            name: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn list_is_ordered_bytewise_by_name() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let mut expected = vec![
        "docker.io/library/redis:7",
        "docker.io/library/redis:7-alpine",
        "Docker.io/upper:1",
        "quay.io/a/b@sha256:00",
        "z",
        "émoji:✓",
        "docker.io/library/alpine:3",
        "a",
        "a/b",
        "a-b",
        "a.b",
    ];
    for (i, name) in expected.iter().enumerate() {
        client.put(put(name, i as u64 + 1)).await.unwrap();
    }
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let list = client.list(ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(names(&list), expected);
}

#[tokio::test]
async fn namespaces_are_isolated_and_default_is_the_default() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    client.put(put("shared:1", 1)).await.unwrap();
    client.put(in_ns("k8s.io", put("shared:1", 2))).await.unwrap();
    client.put(in_ns("k8s.io", put("only-k8s", 3))).await.unwrap();

    // No header and an explicit `default` are the same namespace.
    let got = client
        .get(in_ns(
            "default",
            GetRequest {
                name: "shared:1".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(got.into_inner().image.unwrap().target.unwrap().digest, digest(1));
    let got = client
        .get(in_ns(
            "k8s.io",
            GetRequest {
                name: "shared:1".into(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(got.into_inner().image.unwrap().target.unwrap().digest, digest(2));

    let default = client.list(ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(names(&default), ["shared:1"]);
    let k8s = client
        .list(in_ns("k8s.io", ListRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&k8s), ["only-k8s", "shared:1"]);
    let other = client
        .list(in_ns("other", ListRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(other.images.is_empty());

    let err = client
        .get(GetRequest {
            name: "only-k8s".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Deleting in one namespace leaves the other alone.
    client
        .delete(in_ns(
            "k8s.io",
            DeleteRequest {
                name: "shared:1".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    client
        .get(GetRequest {
            name: "shared:1".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_bad_namespace_is_invalid_argument_naming_the_header_and_value() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    for bad in ["has/slash", "-lead", "trail-", "a..b", &"x".repeat(77)] {
        let err = client.put(in_ns(bad, put("x", 1))).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(err.message().contains("containerd-namespace"), "{}", err.message());
        assert!(err.message().contains(&bad[..10.min(bad.len())]), "{}", err.message());
        let err = client.list(in_ns(bad, ListRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    assert!(
        client
            .list(ListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images
            .is_empty()
    );
}

/// Each case: a mutation of a valid image, the field the error must name, and
/// a piece of the refused value the message must repeat.
#[tokio::test]
async fn every_validation_rule_is_invalid_argument_naming_field_and_value() {
    type Mutate = Box<dyn Fn(&mut imaged_api::containerd::v1::Image)>;
    let target = |f: fn(&mut imaged_api::containerd::types::Descriptor)| -> Mutate {
        Box::new(move |i| f(i.target.as_mut().unwrap()))
    };
    let cases: Vec<(&str, Mutate, &str, String)> = vec![
        ("empty name", Box::new(|i| i.name.clear()), "image.name", "\"\"".into()),
        (
            "long name",
            Box::new(|i| i.name = "n".repeat(4097)),
            "image.name",
            "4097 bytes".into(),
        ),
        (
            "control char",
            Box::new(|i| i.name = "a\u{7}b".into()),
            "image.name",
            "a\\u{7}b".into(),
        ),
        (
            "no digest",
            target(|t| t.digest.clear()),
            "image.target.digest",
            "must not be empty".into(),
        ),
        (
            "no colon",
            target(|t| t.digest = "sha256".into()),
            "image.target.digest",
            "\"sha256\"".into(),
        ),
        (
            "short hex",
            target(|t| t.digest = "sha256:abc".into()),
            "image.target.digest",
            "sha256:abc".into(),
        ),
        (
            "upper hex",
            target(|t| t.digest = format!("sha256:{}", "A".repeat(64))),
            "image.target.digest",
            "AAAA".into(),
        ),
        (
            "sha512 length",
            target(|t| t.digest = format!("sha512:{}", "a".repeat(64))),
            "image.target.digest",
            "128 lowercase hex".into(),
        ),
        (
            "unknown algorithm",
            target(|t| t.digest = format!("md5:{}", "a".repeat(32))),
            "image.target.digest",
            "unsupported algorithm \"md5\"".into(),
        ),
        ("zero size", target(|t| t.size = 0), "image.target.size", "\"0\"".into()),
        (
            "negative size",
            target(|t| t.size = -5),
            "image.target.size",
            "\"-5\"".into(),
        ),
        (
            "no media type",
            target(|t| t.media_type.clear()),
            "image.target.media_type",
            "must not be empty".into(),
        ),
        (
            "bare media type",
            target(|t| t.media_type = "json".into()),
            "image.target.media_type",
            "\"json\"".into(),
        ),
        (
            "long media type",
            target(|t| t.media_type = format!("application/{}", "x".repeat(250))),
            "image.target.media_type",
            "more than 255".into(),
        ),
        (
            "long annotation",
            target(|t| {
                t.annotations.insert("key".into(), "v".repeat(4094));
            }),
            "image.target.annotations[\"key\"]",
            "4097 bytes".into(),
        ),
        (
            "empty annotation key",
            target(|t| {
                t.annotations.insert(String::new(), "v".into());
            }),
            "image.target.annotations[\"\"]",
            "key must not be empty".into(),
        ),
        (
            "record too large",
            target(|t| {
                for n in 0..20 {
                    t.annotations.insert(format!("k{n}"), "v".repeat(4000));
                }
            }),
            "invalid image ",
            "65536 allowed".into(),
        ),
    ];

    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    for (case, mutate, field, value) in &cases {
        let mut img = image("valid:1", 1);
        mutate(&mut img);
        let err = client
            .put(PutRequest {
                image: Some(img),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{case}: {}", err.message());
        assert!(err.message().contains(field), "{case}: {} lacks {field}", err.message());
        assert!(
            err.message().contains(value.as_str()),
            "{case}: {} lacks {value}",
            err.message()
        );
    }

    // A missing image or target reads as empty and is refused too.
    let err = client.put(PutRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("image.target.digest"), "{}", err.message());
    let mut img = image("x", 1);
    img.target = None;
    let err = client
        .put(PutRequest {
            image: Some(img),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("image.target.digest"), "{}", err.message());

    // Get and Delete check the name too.
    let err = client.get(GetRequest { name: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("invalid name"), "{}", err.message());
    let err = client
        .delete(DeleteRequest {
            name: "a\nb".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Nothing was written by any refusal.
    assert!(
        client
            .list(ListRequest::default())
            .await
            .unwrap()
            .into_inner()
            .images
            .is_empty()
    );
}

#[tokio::test]
async fn the_largest_valid_values_are_accepted() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let mut img = image(&"n".repeat(4096), 1);
    let target = img.target.as_mut().unwrap();
    target.media_type = format!("application/{}", "x".repeat(127));
    target.annotations.insert("k".into(), "v".repeat(4095));
    client
        .put(PutRequest {
            image: Some(img.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = client
        .get(GetRequest { name: img.name.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(without_times(got.image), Some(img));
}

#[tokio::test]
async fn empty_annotation_values_are_not_stored() {
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let mut img = image("x:1", 1);
    img.target
        .as_mut()
        .unwrap()
        .annotations
        .insert("gone".into(), String::new());
    img.target
        .as_mut()
        .unwrap()
        .annotations
        .insert("kept".into(), "1".into());
    client
        .put(PutRequest {
            image: Some(img),
            ..Default::default()
        })
        .await
        .unwrap();
    let got = client
        .get(GetRequest { name: "x:1".into() })
        .await
        .unwrap()
        .into_inner();
    let annotations = got.image.unwrap().target.unwrap().annotations;
    assert_eq!(
        annotations.into_iter().collect::<Vec<_>>(),
        [("kept".to_string(), "1".to_string())]
    );
}

#[tokio::test]
async fn concurrent_puts_from_many_clients_all_land() {
    let daemon = Daemon::start();
    let channel = daemon.channel().await;
    let mut tasks = Vec::new();
    for w in 0..16u64 {
        let mut client = imaged_api::containerd::v1::images_client::ImagesClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25u64 {
                client
                    .put(put(&format!("w{w:02}/i{i:02}"), w * 100 + i + 1))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut client = daemon.seed().await;
    let list = client.list(ListRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.images.len(), 400);
    for img in &list.images {
        let (w, i) = img.name.split_once('/').unwrap();
        let seed = w[1..].parse::<u64>().unwrap() * 100 + i[1..].parse::<u64>().unwrap() + 1;
        assert_eq!(img.target.as_ref().unwrap(), &descriptor(seed));
    }
}

#[tokio::test]
async fn preconditions_on_the_wire() {
    use imaged_api::containerd::v1::{Precondition, precondition::Condition};
    let daemon = Daemon::start();
    let mut client = daemon.seed().await;
    let absent = || {
        Some(Precondition {
            condition: Some(Condition::Absent(())),
        })
    };
    let at = |n: u64| {
        Some(Precondition {
            condition: Some(Condition::Digest(digest(n))),
        })
    };

    client
        .put(PutRequest {
            image: Some(image("a", 1)),
            precondition: absent(),
        })
        .await
        .unwrap();
    let err = client
        .put(PutRequest {
            image: Some(image("a", 2)),
            precondition: absent(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(
        err.message().contains("already exists") && err.message().contains(&digest(1)),
        "{}",
        err.message()
    );
    let err = client
        .put(PutRequest {
            image: Some(image("a", 2)),
            precondition: at(7),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    client
        .put(PutRequest {
            image: Some(image("a", 2)),
            precondition: at(1),
        })
        .await
        .unwrap();

    let bad = Some(Precondition {
        condition: Some(Condition::Digest("sha256:xyz".into())),
    });
    let err = client
        .put(PutRequest {
            image: Some(image("a", 3)),
            precondition: bad,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("precondition.digest"), "{}", err.message());

    let err = client
        .delete(DeleteRequest {
            name: "a".into(),
            precondition: absent(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("precondition.absent"), "{}", err.message());
    let err = client
        .delete(DeleteRequest {
            name: "a".into(),
            precondition: at(1),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(
        err.message()
            .contains(&format!("points at {}, not {}", digest(2), digest(1))),
        "{}",
        err.message()
    );
    client
        .delete(DeleteRequest {
            name: "a".into(),
            precondition: at(2),
        })
        .await
        .unwrap();
    let err = client.get(GetRequest { name: "a".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // A Delete of a name that is gone is NOT_FOUND, with a test or without
    // (docs/API.md): there is nothing to delete, whatever it pointed at.
    let err = client
        .delete(DeleteRequest {
            name: "a".into(),
            precondition: at(2),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());
}

//! containerd's own services against the real daemon, through Rust gRPC
//! clients: the wire layout (with message definitions written independently
//! from the reference's field numbers), every error code, namespace rules,
//! field masks, compare-and-delete, the filter language, one store shared
//! with the seed API, and the message-size limit.

mod common;

use std::time::Duration;

use common::{Daemon, descriptor, digest, in_ns, put};
use imaged_api::containerd::services::images::v1 as ctrd;
use imaged_api::containerd::services::namespaces::v1 as ctrd_ns;
use imaged_api::containerd::v1 as seed;
use tonic::Code;
use tonic::transport::Channel;

/// Messages written from `shared/reference/containerd-compat.md`, not from
/// imaged's .proto files, so a wrong field number in imaged shows up here.
mod reference {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Descriptor {
        #[prost(string, tag = "1")]
        pub media_type: String,
        #[prost(string, tag = "2")]
        pub digest: String,
        #[prost(int64, tag = "3")]
        pub size: i64,
        #[prost(map = "string, string", tag = "5")]
        pub annotations: HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Image {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(map = "string, string", tag = "2")]
        pub labels: HashMap<String, String>,
        #[prost(message, optional, tag = "3")]
        pub target: Option<Descriptor>,
        #[prost(message, optional, tag = "7")]
        pub created_at: Option<prost_types::Timestamp>,
        #[prost(message, optional, tag = "8")]
        pub updated_at: Option<prost_types::Timestamp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<Image>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CreateImageRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<Image>,
        #[prost(message, optional, tag = "2")]
        pub source_date_epoch: Option<prost_types::Timestamp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct UpdateImageRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<Image>,
        #[prost(message, optional, tag = "2")]
        pub update_mask: Option<prost_types::FieldMask>,
        #[prost(message, optional, tag = "3")]
        pub source_date_epoch: Option<prost_types::Timestamp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NameRequest {
        #[prost(string, tag = "1")]
        pub name: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListRequest {
        #[prost(string, repeated, tag = "1")]
        pub filters: Vec<String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListResponse {
        #[prost(message, repeated, tag = "1")]
        pub images: Vec<Image>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct DeleteImageRequest {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(bool, tag = "2")]
        pub sync: bool,
        #[prost(message, optional, tag = "3")]
        pub target: Option<Descriptor>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Namespace {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(map = "string, string", tag = "2")]
        pub labels: HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NamespaceMessage {
        #[prost(message, optional, tag = "1")]
        pub namespace: Option<Namespace>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListNamespacesResponse {
        #[prost(message, repeated, tag = "1")]
        pub namespaces: Vec<Namespace>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct VersionResponse {
        #[prost(string, tag = "1")]
        pub version: String,
        #[prost(string, tag = "2")]
        pub revision: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
}

/// One unary call on `path` with the reference messages.
async fn call<Req, Resp>(
    channel: &Channel,
    path: &'static str,
    ns: Option<&str>,
    message: Req,
) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let request = match ns {
        Some(ns) => in_ns(ns, message),
        None => tonic::Request::new(message),
    };
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(request, path.parse().unwrap(), codec)
        .await
        .map(|r| r.into_inner())
}

fn ref_image(name: &str, seed: u64) -> reference::Image {
    let d = descriptor(seed);
    reference::Image {
        name: name.into(),
        labels: [("env".to_string(), "prod".to_string())].into_iter().collect(),
        target: Some(reference::Descriptor {
            media_type: d.media_type,
            digest: d.digest,
            size: d.size,
            annotations: [("a".to_string(), "1".to_string())].into_iter().collect(),
        }),
        created_at: None,
        updated_at: None,
    }
}

fn ctrd_image(name: &str, seed: u64, labels: &[(&str, &str)]) -> ctrd::Image {
    ctrd::Image {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        target: Some(descriptor(seed)),
        created_at: None,
        updated_at: None,
    }
}

async fn create(client: &mut ctrd::images_client::ImagesClient<Channel>, ns: &str, image: ctrd::Image) -> ctrd::Image {
    let request = ctrd::CreateImageRequest {
        image: Some(image),
        source_date_epoch: None,
    };
    client
        .create(in_ns(ns, request))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
}

fn names(images: &[ctrd::Image]) -> Vec<&str> {
    images.iter().map(|i| i.name.as_str()).collect()
}

#[tokio::test]
async fn the_wire_layout_matches_containerd_field_numbers() {
    let daemon = Daemon::start();
    let channel = daemon.channel().await;
    const IMAGES: &str = "/containerd.services.images.v1.Images";
    let epoch = prost_types::Timestamp {
        seconds: 1_600_000_000,
        nanos: 5,
    };

    let created: reference::ImageRequest = call(
        &channel,
        "/containerd.services.images.v1.Images/Create",
        Some("wire"),
        reference::CreateImageRequest {
            image: Some(ref_image("docker.io/library/redis:7", 1)),
            source_date_epoch: Some(epoch),
        },
    )
    .await
    .unwrap();
    let created = created.image.unwrap();
    assert_eq!(
        created.created_at,
        Some(epoch),
        "source_date_epoch (field 2) wins over the clock"
    );
    assert_eq!(created.updated_at, Some(epoch));
    assert_eq!(created.labels, ref_image("", 1).labels);
    assert_eq!(created.target, ref_image("", 1).target);

    let got: reference::ImageRequest = call(
        &channel,
        "/containerd.services.images.v1.Images/Get",
        Some("wire"),
        reference::NameRequest {
            name: "docker.io/library/redis:7".into(),
        },
    )
    .await
    .unwrap();
    assert_eq!(got.image.unwrap(), created);

    let later = prost_types::Timestamp {
        seconds: 1_700_000_000,
        nanos: 0,
    };
    let mut change = ref_image("docker.io/library/redis:7", 1);
    change.labels = [("team".to_string(), "a".to_string())].into_iter().collect();
    let updated: reference::ImageRequest = call(
        &channel,
        "/containerd.services.images.v1.Images/Update",
        Some("wire"),
        reference::UpdateImageRequest {
            image: Some(change),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.team".into()],
            }),
            source_date_epoch: Some(later),
        },
    )
    .await
    .unwrap();
    let updated = updated.image.unwrap();
    assert_eq!(updated.labels.len(), 2);
    assert_eq!(updated.created_at, Some(epoch));
    assert_eq!(
        updated.updated_at,
        Some(later),
        "source_date_epoch is field 3 on update"
    );

    let listed: reference::ListResponse = call(
        &channel,
        &*format!("{IMAGES}/List").leak(),
        Some("wire"),
        reference::ListRequest {
            filters: vec!["labels.team==a".into()],
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.images, vec![updated.clone()]);

    let mismatch = reference::DeleteImageRequest {
        name: "docker.io/library/redis:7".into(),
        sync: true,
        target: Some(reference::Descriptor {
            digest: digest(2),
            ..Default::default()
        }),
    };
    let err = call::<_, reference::Empty>(
        &channel,
        "/containerd.services.images.v1.Images/Delete",
        Some("wire"),
        mismatch,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "target is field 3: {err:?}");
    let matching = reference::DeleteImageRequest {
        name: "docker.io/library/redis:7".into(),
        sync: true,
        target: Some(reference::Descriptor {
            digest: digest(1),
            ..Default::default()
        }),
    };
    call::<_, reference::Empty>(
        &channel,
        "/containerd.services.images.v1.Images/Delete",
        Some("wire"),
        matching,
    )
    .await
    .unwrap();

    let ns: reference::NamespaceMessage = call(
        &channel,
        "/containerd.services.namespaces.v1.Namespaces/Create",
        None,
        reference::NamespaceMessage {
            namespace: Some(reference::Namespace {
                name: "team-a".into(),
                labels: [("owner".to_string(), "x".to_string())].into_iter().collect(),
            }),
        },
    )
    .await
    .unwrap();
    assert_eq!(ns.namespace.unwrap().labels.get("owner").unwrap(), "x");
    let all: reference::ListNamespacesResponse = call(
        &channel,
        "/containerd.services.namespaces.v1.Namespaces/List",
        None,
        reference::NameRequest { name: String::new() },
    )
    .await
    .unwrap();
    let all: Vec<_> = all.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(all, ["team-a", "wire"]);

    let version: reference::VersionResponse = call(
        &channel,
        "/containerd.services.version.v1.Version/Version",
        None,
        reference::Empty {},
    )
    .await
    .unwrap();
    assert_eq!(version.version, env!("CARGO_PKG_VERSION"));
    assert!(!version.revision.is_empty());
}

#[tokio::test]
async fn the_namespace_header_is_required_and_validated() {
    let daemon = Daemon::start();
    let mut images = daemon.images().await;
    let err = images.list(ctrd::ListImagesRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("namespace is required"), "{}", err.message());
    let err = images
        .get(ctrd::GetImageRequest { name: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = images
        .list(in_ns("bad/ns", ctrd::ListImagesRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("containerd-namespace") && err.message().contains("bad/ns"));
}

#[tokio::test]
async fn create_refuses_duplicates_and_sets_its_own_times() {
    let daemon = Daemon::start();
    let mut images = daemon.images().await;
    let mut image = ctrd_image("a", 1, &[("k", "v")]);
    image.created_at = Some(prost_types::Timestamp { seconds: 1, nanos: 0 });
    let created = create(&mut images, "default", image.clone()).await;
    assert_eq!(created.created_at, created.updated_at);
    assert!(
        created.created_at.unwrap().seconds > 1_700_000_000,
        "client time ignored"
    );

    let err = images
        .create(in_ns(
            "default",
            ctrd::CreateImageRequest {
                image: Some(image),
                source_date_epoch: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("\"a\""), "{}", err.message());

    let err = images
        .get(in_ns("default", ctrd::GetImageRequest { name: "b".into() }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn update_without_a_mask_replaces_the_image_keeping_created_at() {
    let daemon = Daemon::start();
    let mut images = daemon.images().await;
    let created = create(&mut images, "default", ctrd_image("a", 1, &[("k", "v")])).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let updated = images
        .update(in_ns(
            "default",
            ctrd::UpdateImageRequest {
                image: Some(ctrd_image("a", 2, &[("other", "x")])),
                update_mask: None,
                source_date_epoch: None,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(updated.target.unwrap().digest, digest(2));
    assert_eq!(updated.labels.keys().collect::<Vec<_>>(), ["other"]);
    assert_eq!(updated.created_at, created.created_at);
    let (before, after) = (created.updated_at.unwrap(), updated.updated_at.unwrap());
    assert!((after.seconds, after.nanos) > (before.seconds, before.nanos));

    let err = images
        .update(in_ns(
            "default",
            ctrd::UpdateImageRequest {
                image: Some(ctrd_image("absent", 2, &[])),
                update_mask: None,
                source_date_epoch: None,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn update_masks_change_exactly_their_paths() {
    let daemon = Daemon::start();
    let mut images = daemon.images().await;
    let mut base = ctrd_image("a", 1, &[("keep", "1"), ("drop", "2"), ("change", "3")]);
    base.target
        .as_mut()
        .unwrap()
        .annotations
        .insert("ann".into(), "x".into());
    create(&mut images, "default", base).await;

    let update = |image: ctrd::Image, paths: &[&str]| {
        let mut images = images.clone();
        let request = ctrd::UpdateImageRequest {
            image: Some(image),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            source_date_epoch: None,
        };
        async move {
            images
                .update(in_ns("default", request))
                .await
                .map(|r| r.into_inner().image.unwrap())
        }
    };

    // labels.<key>: set from the request, removed when absent or empty there.
    // The request carries no target at all, as `ctr images label` sends it.
    let labels_only = ctrd::Image {
        name: "a".into(),
        labels: [
            ("change".to_string(), "33".to_string()),
            ("drop".to_string(), String::new()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    let got = update(labels_only, &["labels.change", "labels.drop", "labels.never"])
        .await
        .unwrap();
    let labels: Vec<_> = got
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(labels, ["change=33", "keep=1"]);
    assert_eq!(got.target.as_ref().unwrap().digest, digest(1), "target untouched");

    // labels: replaced as a whole.
    let got = update(ctrd_image("a", 9, &[("only", "1")]), &["labels"]).await.unwrap();
    assert_eq!(got.labels.keys().collect::<Vec<_>>(), ["only"]);
    assert_eq!(got.target.as_ref().unwrap().digest, digest(1));

    // annotations.<key> and annotations act on the target's annotations.
    let mut with_ann = ctrd_image("a", 9, &[]);
    with_ann
        .target
        .as_mut()
        .unwrap()
        .annotations
        .insert("new".into(), "y".into());
    let got = update(with_ann.clone(), &["annotations.new"]).await.unwrap();
    let t = got.target.unwrap();
    assert_eq!(
        (
            t.annotations.get("ann").map(String::as_str),
            t.annotations.get("new").map(String::as_str)
        ),
        (Some("x"), Some("y"))
    );
    assert_eq!(t.digest, digest(1));
    let got = update(with_ann.clone(), &["annotations"]).await.unwrap();
    assert_eq!(got.target.unwrap().annotations.keys().collect::<Vec<_>>(), ["new"]);

    // target: replaced as a unit.
    let got = update(ctrd_image("a", 9, &[("ignored", "1")]), &["target"])
        .await
        .unwrap();
    assert_eq!(got.target.unwrap(), descriptor(9));
    assert_eq!(got.labels.keys().collect::<Vec<_>>(), ["only"]);

    // Any other path is refused, naming the mask and the path.
    for bad in ["name", "created_at", "target.digest", "label.x"] {
        let err = update(ctrd_image("a", 9, &[]), &[bad]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(
            err.message().contains("update_mask") && err.message().contains(bad),
            "{}",
            err.message()
        );
    }
    // A target path with an invalid target is refused with its field.
    let mut bad_target = ctrd_image("a", 9, &[]);
    bad_target.target.as_mut().unwrap().digest = "sha256:nope".into();
    let err = update(bad_target, &["target"]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("image.target.digest"), "{}", err.message());
}

#[tokio::test]
async fn delete_compares_the_target_and_accepts_sync() {
    let daemon = Daemon::start();
    let mut images = daemon.images().await;
    create(&mut images, "default", ctrd_image("a", 1, &[])).await;
    let delete = |name: &str, target: Option<u64>| ctrd::DeleteImageRequest {
        name: name.into(),
        sync: true,
        target: target.map(descriptor),
    };

    let err = images.delete(in_ns("default", delete("a", Some(2)))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains(&digest(1)), "{}", err.message());
    images
        .get(in_ns("default", ctrd::GetImageRequest { name: "a".into() }))
        .await
        .unwrap();

    let mut bad = delete("a", Some(1));
    bad.target.as_mut().unwrap().digest = "md5:x".into();
    let err = images.delete(in_ns("default", bad)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("target.digest"), "{}", err.message());

    images.delete(in_ns("default", delete("a", Some(1)))).await.unwrap();
    let err = images.delete(in_ns("default", delete("a", None))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn filters_are_or_of_and_with_quoting_and_refuse_bad_input() {
    let daemon = Daemon::start();
    let mut images = daemon.images().await;
    create(
        &mut images,
        "f",
        ctrd_image("docker.io/library/redis:7", 1, &[("env", "prod"), ("team", "a")]),
    )
    .await;
    create(
        &mut images,
        "f",
        ctrd_image("docker.io/library/redis:6", 2, &[("env", "dev"), ("team", "a")]),
    )
    .await;
    let mut quay = ctrd_image("quay.io/x/y:1", 3, &[("com.example/with space", "v 1")]);
    quay.target.as_mut().unwrap().media_type = "application/vnd.docker.distribution.manifest.v2+json".into();
    quay.target
        .as_mut()
        .unwrap()
        .annotations
        .insert("org.opencontainers.image.ref.name".into(), "1".into());
    create(&mut images, "f", quay).await;
    create(
        &mut images,
        "other",
        ctrd_image("docker.io/library/redis:7", 4, &[("env", "prod")]),
    )
    .await;

    let list = |filters: &[&str]| {
        let mut images = images.clone();
        let request = ctrd::ListImagesRequest {
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        async move { images.list(in_ns("f", request)).await.map(|r| r.into_inner().images) }
    };
    let all = [
        "docker.io/library/redis:6",
        "docker.io/library/redis:7",
        "quay.io/x/y:1",
    ];
    assert_eq!(names(&list(&[]).await.unwrap()), all, "ordered by name");
    assert_eq!(
        names(&list(&["name==docker.io/library/redis:7"]).await.unwrap()),
        ["docker.io/library/redis:7"]
    );
    assert_eq!(names(&list(&["name~=^docker\\.io/"]).await.unwrap()), &all[..2]);
    assert_eq!(
        names(&list(&["labels.team==a,labels.env==prod"]).await.unwrap()),
        ["docker.io/library/redis:7"]
    );
    assert_eq!(
        names(&list(&["labels.env==dev", "name~=quay"]).await.unwrap()),
        ["docker.io/library/redis:6", "quay.io/x/y:1"]
    );
    assert_eq!(
        names(&list(&["labels.env!=prod"]).await.unwrap()),
        ["docker.io/library/redis:6", "quay.io/x/y:1"]
    );
    assert_eq!(names(&list(&["labels.team"]).await.unwrap()), &all[..2]);
    assert_eq!(
        names(&list(&["labels.\"com.example/with space\"==\"v 1\""]).await.unwrap()),
        ["quay.io/x/y:1"]
    );
    assert_eq!(
        names(
            &list(&["annotations.\"org.opencontainers.image.ref.name\""])
                .await
                .unwrap()
        ),
        ["quay.io/x/y:1"]
    );
    assert_eq!(
        names(&list(&["target.mediatype~=docker"]).await.unwrap()),
        ["quay.io/x/y:1"]
    );
    assert_eq!(
        names(&list(&[&format!("target.digest=={}", digest(2))]).await.unwrap()),
        ["docker.io/library/redis:6"]
    );
    assert_eq!(names(&list(&["name~=/redis:[67]$/"]).await.unwrap()), &all[..2]);

    for (bad, want) in [
        ("name==", "at position 6"),
        ("name=~x", "unsupported operator"),
        ("labels.\"open", "quoted literal not terminated"),
        ("nmae==x", "unknown field"),
        ("name~=(", "invalid regular expression"),
    ] {
        let err = list(&[bad]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(
            err.message().contains(want) && err.message().contains("filters[0]"),
            "{bad}: {}",
            err.message()
        );
    }
}

#[tokio::test]
async fn both_apis_share_one_store() {
    let daemon = Daemon::start();
    let mut images = daemon.images().await;
    let mut seed = daemon.seed().await;

    // Seed Put → visible through containerd's API, with times.
    seed.put(put("from-seed", 1)).await.unwrap();
    let got = images
        .get(in_ns(
            "default",
            ctrd::GetImageRequest {
                name: "from-seed".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(got.target.unwrap(), descriptor(1));
    assert!(got.created_at.is_some());

    // containerd Create with labels → the seed API's Put replaces the target
    // and keeps labels and created_at.
    let created = create(&mut images, "default", ctrd_image("from-ctrd", 2, &[("k", "v")])).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    seed.put(put("from-ctrd", 3)).await.unwrap();
    let after = images
        .get(in_ns(
            "default",
            ctrd::GetImageRequest {
                name: "from-ctrd".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(after.target.unwrap(), descriptor(3));
    assert_eq!(after.labels, created.labels);
    assert_eq!(after.created_at, created.created_at);
    assert_ne!(after.updated_at, created.updated_at);

    // containerd Delete → gone from the seed API.
    images
        .delete(in_ns(
            "default",
            ctrd::DeleteImageRequest {
                name: "from-seed".into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let err = seed
        .get(seed::GetRequest {
            name: "from-seed".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // The same bad input gets the same refusal from both APIs.
    let mut bad = ctrd_image("bad", 1, &[]);
    bad.target.as_mut().unwrap().digest = "sha256:abc".into();
    let via_ctrd = images
        .create(in_ns(
            "default",
            ctrd::CreateImageRequest {
                image: Some(bad.clone()),
                source_date_epoch: None,
            },
        ))
        .await
        .unwrap_err();
    let via_seed = seed
        .put(seed::PutRequest {
            image: Some(seed::Image {
                name: bad.name,
                target: bad.target,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(via_ctrd.code(), Code::InvalidArgument);
    assert_eq!(via_ctrd.message(), via_seed.message());
}

#[tokio::test]
async fn namespaces_are_created_listed_labelled_and_deleted_when_empty() {
    let daemon = Daemon::start();
    let mut ns = daemon.namespaces().await;
    let mut seed = daemon.seed().await;
    let namespace = |name: &str, labels: &[(&str, &str)]| ctrd_ns::Namespace {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    let list = |ns: &mut ctrd_ns::namespaces_client::NamespacesClient<Channel>, filter: &str| {
        let mut ns = ns.clone();
        let filter = filter.to_string();
        async move {
            ns.list(ctrd_ns::ListNamespacesRequest { filter }).await.map(|r| {
                r.into_inner()
                    .namespaces
                    .into_iter()
                    .map(|n| n.name)
                    .collect::<Vec<_>>()
            })
        }
    };

    ns.create(ctrd_ns::CreateNamespaceRequest {
        namespace: Some(namespace("team-a", &[("owner", "a")])),
    })
    .await
    .unwrap();
    let err = ns
        .create(ctrd_ns::CreateNamespaceRequest {
            namespace: Some(namespace("team-a", &[])),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = ns
        .create(ctrd_ns::CreateNamespaceRequest {
            namespace: Some(namespace("Bad Name", &[])),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("namespace.name"), "{}", err.message());

    // A namespace also exists once it holds an image.
    seed.put(in_ns("implicit", put("x", 1))).await.unwrap();
    assert_eq!(list(&mut ns, "").await.unwrap(), ["implicit", "team-a"]);
    assert_eq!(list(&mut ns, "labels.owner==a").await.unwrap(), ["team-a"]);

    let got = ns
        .get(ctrd_ns::GetNamespaceRequest { name: "team-a".into() })
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(got, namespace("team-a", &[("owner", "a")]));
    let err = ns
        .get(ctrd_ns::GetNamespaceRequest { name: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // Update by mask path, and without a mask (replace the labels).
    let got = ns
        .update(ctrd_ns::UpdateNamespaceRequest {
            namespace: Some(namespace("team-a", &[("tier", "1")])),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.tier".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(got.labels.len(), 2);
    let got = ns
        .update(ctrd_ns::UpdateNamespaceRequest {
            namespace: Some(namespace("team-a", &[("only", "1")])),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .namespace
        .unwrap();
    assert_eq!(got, namespace("team-a", &[("only", "1")]));
    let err = ns
        .update(ctrd_ns::UpdateNamespaceRequest {
            namespace: Some(namespace("team-a", &[])),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["name".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Deleting a namespace that holds images is refused; an empty one goes.
    let err = ns
        .delete(ctrd_ns::DeleteNamespaceRequest {
            name: "implicit".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("must be empty"), "{}", err.message());
    seed.delete(in_ns(
        "implicit",
        seed::DeleteRequest {
            name: "x".into(),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    ns.delete(ctrd_ns::DeleteNamespaceRequest {
        name: "implicit".into(),
    })
    .await
    .unwrap();
    ns.delete(ctrd_ns::DeleteNamespaceRequest { name: "team-a".into() })
        .await
        .unwrap();
    let err = ns
        .delete(ctrd_ns::DeleteNamespaceRequest { name: "team-a".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(list(&mut ns, "").await.unwrap().is_empty());
}

#[tokio::test]
async fn a_list_too_large_for_one_message_is_resource_exhausted_with_the_count() {
    let daemon = Daemon::start();
    let mut images = daemon.images().await;
    // Images of about 60 KB each.
    let labels: Vec<(String, String)> = (0..15).map(|i| (format!("k{i}"), "v".repeat(3990))).collect();
    let creator = images.clone();
    let create = |range: std::ops::Range<u64>| {
        let mut tasks = Vec::new();
        for n in range {
            let mut images = creator.clone();
            let mut image = ctrd_image(&format!("big/{n:03}"), n + 1, &[]);
            image.labels = labels.iter().cloned().collect();
            tasks.push(tokio::spawn(async move {
                let request = ctrd::CreateImageRequest {
                    image: Some(image),
                    source_date_epoch: None,
                };
                images.create(in_ns("big", request)).await.unwrap();
            }));
        }
        tasks
    };
    // 150 of them, about 9 MB: more than the daemon holds while it reads a
    // whole list, less than a message. The answer is measured, read again
    // and given whole.
    for t in create(0..150) {
        t.await.unwrap();
    }
    let whole = images
        .list(in_ns("big", ctrd::ListImagesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .images;
    let names: Vec<String> = whole.iter().map(|i| i.name.clone()).collect();
    let expected: Vec<String> = (0..150u64).map(|n| format!("big/{n:03}")).collect();
    assert_eq!(names, expected);
    assert!(
        whole
            .iter()
            .all(|i| i.labels.len() == 15 && i.labels["k7"].len() == 3990)
    );
    // 300: about 18 MB, over the 16 MiB limit.
    for t in create(150..300) {
        t.await.unwrap();
    }
    let err = images
        .list(in_ns("big", ctrd::ListImagesRequest::default()))
        .await
        .map(|r| r.into_inner().images.len())
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().starts_with("300 images match"), "{}", err.message());
    // The seed API's images carry labels too: its whole list is refused the
    // same way, pointing at pages and streams, which do answer.
    let mut seed = daemon.seed().await;
    let err = seed
        .list(in_ns("big", seed::ListRequest::default()))
        .await
        .map(|r| r.into_inner().images.len())
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("300 images match") && err.message().contains("page_size or ListStream"));
    let page = seed
        .list(in_ns(
            "big",
            seed::ListRequest {
                page_size: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(page.images.len() < 300, "a page is cut short to fit one message");
    assert!(!page.next_page_token.is_empty());
    // Its token resumes after the last image it holds: the walk gives each
    // of the 300 once, in order, whole.
    let mut walked: Vec<seed::Image> = page.images;
    let mut token = page.next_page_token;
    while !token.is_empty() {
        let page = seed
            .list(in_ns(
                "big",
                seed::ListRequest {
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        walked.extend(page.images);
        token = page.next_page_token;
    }
    let all: Vec<String> = (0..300u64).map(|n| format!("big/{n:03}")).collect();
    assert_eq!(walked.iter().map(|i| i.name.clone()).collect::<Vec<_>>(), all);
    assert!(
        walked
            .iter()
            .all(|i| i.labels.len() == 15 && i.labels["k7"].len() == 3990)
    );
    // A stream's batches are cut the same way.
    let mut stream = seed
        .list_stream(in_ns("big", seed::ListRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    let mut batches = 0;
    while let Some(batch) = stream.message().await.unwrap() {
        batches += 1;
        streamed.extend(batch.images.into_iter().map(|i| i.name));
    }
    assert_eq!(streamed, all);
    assert!(batches > 1, "300 images of 60 KB cannot go in one message");

    // A narrower filter still answers.
    let some = images
        .list(in_ns(
            "big",
            ctrd::ListImagesRequest {
                filters: vec!["name~=^big/00".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(some.len(), 10);
}

//! Unit tests of protected images through the store: what a protected
//! image refuses, what it still takes, and how each write changes its
//! protection.

use imaged_types::{ImageUpdate, Labels, PROTECTED_LABEL, PROTECTED_VALUE};

use super::tests::{image, ns, open};
use super::*;

fn refused(result: Result<Image, Error>, what: &str) -> String {
    match result {
        Err(Error::FailedPrecondition(text)) => text,
        other => panic!("{what}: expected FAILED_PRECONDITION, got {other:?}"),
    }
}

fn update(name: &str, labels: &[(&str, &str)], target: Option<Image>) -> ImageUpdate {
    ImageUpdate {
        name: name.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        annotations: Labels::new(),
        target: Ok(target.unwrap_or_else(|| image(name, 1, &[])).target),
    }
}

#[tokio::test]
async fn a_protected_image_refuses_deletion_and_retargeting_until_unprotected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = ns("default");
    let put = store
        .put_protecting(d.clone(), image("a", 1, &[("k", "v")]), Precondition::None, Some(true))
        .await
        .unwrap();
    assert!(put.protected());
    assert_eq!(
        put.labels.get(PROTECTED_LABEL).map(String::as_str),
        Some(PROTECTED_VALUE)
    );
    let revision = super::tests::revision(&store);

    let text = refused(store.delete(d.clone(), "a".into(), Precondition::None).await, "delete");
    assert!(
        text.contains("\"a\"") && text.contains("protected") && text.contains("unprotect"),
        "{text}"
    );
    assert!(text.contains("cannot be deleted"), "{text}");
    let text = refused(
        store.put(d.clone(), image("a", 2, &[]), Precondition::None).await,
        "retarget by put",
    );
    assert!(text.contains("cannot be pointed at other content"), "{text}");
    // Unprotecting and retargeting in one put is still a retarget of a
    // protected image.
    refused(
        store
            .put_protecting(d.clone(), image("a", 2, &[]), Precondition::None, Some(false))
            .await,
        "unprotect and retarget at once",
    );
    refused(
        store
            .update(
                d.clone(),
                update("a", &[], Some(image("a", 3, &[]))),
                vec!["target".into()],
                None,
            )
            .await
            .map(|w| w.image),
        "retarget by update",
    );
    refused(
        store.delete_namespace(d.clone()).await.map(|_| put.clone()),
        "delete its namespace",
    );
    assert_eq!(super::tests::revision(&store), revision, "a refusal writes nothing");

    // Labels still change; a put that replaces them keeps the protection.
    let relabeled = store
        .put(d.clone(), image("a", 1, &[("k", "w")]), Precondition::None)
        .await
        .unwrap();
    assert!(relabeled.protected(), "{relabeled:?}");
    assert_eq!(relabeled.labels.get("k").map(String::as_str), Some("w"));
    let labeled = store
        .update(
            d.clone(),
            update("a", &[("team", "x")], None),
            vec!["labels.team".into()],
            None,
        )
        .await
        .unwrap()
        .image;
    assert!(labeled.protected());

    // Removing the label unprotects, as containerd's API does it.
    let path = format!("labels.{PROTECTED_LABEL}");
    let unprotected = store
        .update(d.clone(), update("a", &[], None), vec![path], None)
        .await
        .unwrap()
        .image;
    assert!(!unprotected.protected());
    store
        .put(d.clone(), image("a", 4, &[]), Precondition::None)
        .await
        .unwrap();
    store.delete(d.clone(), "a".into(), Precondition::None).await.unwrap();
}

#[tokio::test]
async fn the_label_protects_however_it_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let d = ns("default");
    let labels = [(PROTECTED_LABEL, PROTECTED_VALUE)];
    store
        .create(d.clone(), image("created", 1, &labels), None)
        .await
        .unwrap();
    store
        .put(d.clone(), image("put", 1, &labels), Precondition::None)
        .await
        .unwrap();
    // Another value of the label does not protect.
    store
        .put(
            d.clone(),
            image("other", 1, &[(PROTECTED_LABEL, "no")]),
            Precondition::None,
        )
        .await
        .unwrap();
    for name in ["created", "put"] {
        refused(store.delete(d.clone(), name.into(), Precondition::None).await, name);
    }
    store
        .delete(d.clone(), "other".into(), Precondition::None)
        .await
        .unwrap();
    // A put with protected=false unprotects, keeping the target.
    let put = store
        .put_protecting(d.clone(), image("put", 1, &[]), Precondition::None, Some(false))
        .await
        .unwrap();
    assert!(!put.protected());
    store.delete(d.clone(), "put".into(), Precondition::None).await.unwrap();
}

//! The README's client example, whole: the README shows this file from its
//! `use` lines on, its test checks that the two agree, and the tour runs it
//! against the tour's daemon. `cargo run -p imaged-client --example readme`
use futures_util::TryStreamExt;
use imaged_client::{Client, Descriptor, LabelChange};

#[tokio::main]
async fn main() -> Result<(), imaged_client::Error> {
    let client = Client::connect_default()?; // $IMAGED_ADDRESS, else the default socket
    let images = client.namespace("k8s.io")?; // calls carry the namespace
    let target = Descriptor {
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        digest: "sha256:4c5f0bbd0a7fdc0e5a5d6a7ae0a4d0b1c46cfa5ef1d5c0f9a3c5e1f1f6e2a3b4".parse()?,
        size: 1234,
        annotations: Default::default(),
    };
    // Create only if absent: of many runtimes pulling at once, one wins.
    match images.put("docker.io/library/redis:7", target).if_absent().await {
        Err(e) if !e.is_aborted() => return Err(e),
        _ => {} // created, or ABORTED: it exists already
    }
    let image = images.get("docker.io/library/redis:7").await?;
    println!("{} -> {}", image.name, image.target.digest);
    images.label(&image.name, [LabelChange::set("env", "prod")]).await?;
    let page = images
        .list()
        .filter("target.size>1000")
        .order_by("updated_at desc")
        .page_size(50)
        .page()
        .await?;
    let redis = images.list().repository("docker.io/library/redis").page().await?; // its :tags and @digests
    let repositories = images.repositories().filter("tags>=1").page().await?; // counts, newest, last change
    let everything: Vec<_> = images.list_all().try_collect().await?; // lazily streamed
    println!(
        "page: {}, redis: {}, repositories: {}, in all: {}",
        page.images.len(),
        redis.images.len(),
        repositories.repositories.len(),
        everything.len()
    );
    // Changes after the Get's revision: the label comes first.
    let watch = images.watch().filter("labels.env==prod").since(image.mod_revision);
    let mut updates = std::pin::pin!(watch.stream());
    if let Some(update) = updates.try_next().await? {
        println!("revision {}: {} change(s)", update.revision, update.events.len());
    }
    Ok(())
}

//! Keeps a local cache of a namespace's images in step with the daemon, as an
//! informer does: it lists, then watches from the listing's revision, and
//! lists again should the daemon's change log no longer cover a long gap.
//! Each line says what changed and how many images the cache holds.
//! `cargo run -p imaged-client --example informer -- [NAMESPACE] [FILTER]`

use std::collections::BTreeMap;

use futures_util::TryStreamExt;
use imaged_client::{Client, EventType, Informed};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let ns = args.next().unwrap_or_else(|| "default".into());
    let images = Client::connect_default()?.namespace(&ns)?;
    let mut watch = images.watch();
    if let Some(filter) = args.next() {
        watch = watch.filter(filter);
    }
    let mut cache = BTreeMap::new();
    let mut informed = std::pin::pin!(watch.informer());
    while let Some(item) = informed.try_next().await? {
        match item {
            Informed::Listing { images, revision } => {
                cache = images.into_iter().map(|i| (i.name.clone(), i)).collect();
                println!("listed {} images at revision {revision}", cache.len());
            }
            Informed::Update(update) => {
                for event in update.events {
                    let name = event.image.name.clone();
                    match event.kind {
                        EventType::Deleted => drop(cache.remove(&name)),
                        _ => drop(cache.insert(name.clone(), event.image)),
                    }
                    println!("{:?} {name} at {}: {} cached", event.kind, event.revision, cache.len());
                }
            }
        }
    }
    Ok(())
}

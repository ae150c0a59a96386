//! Fills a namespace of a running imaged with synthetic images through the
//! seed API, from many concurrent clients, and prints the rate.
//!
//! `cargo run --release -p imaged --example fill -- SOCKET NAMESPACE COUNT [LABEL_BYTES] [CONCURRENCY]`

use std::time::Instant;

use imaged_api::containerd::types::Descriptor;
use imaged_api::containerd::v1::images_client::ImagesClient;
use imaged_api::containerd::v1::{Image, PutRequest};
use tonic::transport::Endpoint;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [socket, ns, count, rest @ ..] = args.as_slice() else {
        return Err("usage: fill SOCKET NAMESPACE COUNT [LABEL_BYTES] [CONCURRENCY]".into());
    };
    let count: u64 = count.parse()?;
    let label_bytes: usize = rest.first().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let concurrency: u64 = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let channel = Endpoint::try_from(format!("unix://{socket}"))?.connect().await?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let mut client = ImagesClient::new(channel.clone());
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while i < count {
                let mut request = tonic::Request::new(PutRequest {
                    image: Some(Image {
                        name: format!("registry.example/fill/image-{i:09}:latest"),
                        target: Some(Descriptor {
                            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                            digest: format!("sha256:{i:064x}"),
                            size: 1000 + (i % 5000) as i64,
                            annotations: Default::default(),
                        }),
                        labels: if label_bytes > 0 {
                            [("fill".to_string(), "x".repeat(label_bytes))].into_iter().collect()
                        } else {
                            Default::default()
                        },
                        ..Default::default()
                    }),
                });
                request
                    .metadata_mut()
                    .insert("containerd-namespace", ns.parse().unwrap());
                client.put(request).await.expect("put");
                i += concurrency;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{count} images in {secs:.2}s: {:.0}/s", count as f64 / secs);
    Ok(())
}

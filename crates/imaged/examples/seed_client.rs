//! Calls the seed API (`containerd.v1.Images`) of a running imaged with the
//! generated client from `imaged-api`.
//!
//! ```text
//! cargo run -p imaged --example seed_client -- SOCKET [NAMESPACE] put NAME DIGEST SIZE MEDIA_TYPE
//! cargo run -p imaged --example seed_client -- SOCKET [NAMESPACE] get NAME
//! cargo run -p imaged --example seed_client -- SOCKET [NAMESPACE] list
//! cargo run -p imaged --example seed_client -- SOCKET [NAMESPACE] delete NAME
//! ```
//! NAMESPACE is given as `-n NS`; without it the daemon uses `default`.

use imaged_api::containerd::types::Descriptor;
use imaged_api::containerd::v1::images_client::ImagesClient;
use imaged_api::containerd::v1::{DeleteRequest, GetRequest, Image, ListRequest, PutRequest};
use tonic::transport::Endpoint;

const USAGE: &str =
    "usage: seed_client SOCKET [-n NAMESPACE] (put NAME DIGEST SIZE MEDIA_TYPE | get NAME | list | delete NAME)";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return Err(USAGE.into());
    }
    let socket = args.remove(0);
    let namespace = match args.first().map(String::as_str) {
        Some("-n") if args.len() > 1 => Some(args.drain(..2).nth(1).unwrap()),
        _ => None,
    };
    let channel = Endpoint::try_from(format!("unix://{socket}"))?.connect().await?;
    let mut client = ImagesClient::new(channel);
    let ns = namespace.as_deref();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["put", name, digest, size, media_type] => {
            let image = Image {
                name: name.to_string(),
                target: Some(Descriptor {
                    media_type: media_type.to_string(),
                    digest: digest.to_string(),
                    size: size.parse()?,
                    annotations: Default::default(),
                }),
                ..Default::default()
            };
            client
                .put(request(
                    ns,
                    PutRequest {
                        image: Some(image),
                        ..Default::default()
                    },
                ))
                .await?;
        }
        ["get", name] => {
            let image = client
                .get(request(ns, GetRequest { name: name.to_string() }))
                .await?
                .into_inner();
            print_image(&image.image.unwrap_or_default());
        }
        ["list"] => {
            for image in client
                .list(request(ns, ListRequest::default()))
                .await?
                .into_inner()
                .images
            {
                print_image(&image);
            }
        }
        ["delete", name] => {
            client
                .delete(request(
                    ns,
                    DeleteRequest {
                        name: name.to_string(),
                        ..Default::default()
                    },
                ))
                .await?;
        }
        _ => return Err(USAGE.into()),
    }
    Ok(())
}

/// Wraps `message`, adding the namespace header when one was given.
fn request<T>(namespace: Option<&str>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(ns) = namespace {
        request
            .metadata_mut()
            .insert("containerd-namespace", ns.parse().expect("namespace is ASCII"));
    }
    request
}

fn print_image(image: &Image) {
    let target = image.target.clone().unwrap_or_default();
    println!(
        "{}\t{}\t{}\t{}",
        image.name, target.digest, target.size, target.media_type
    );
}

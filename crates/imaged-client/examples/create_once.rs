//! Creates an image only if no one else has: the race-free way for runtimes
//! pulling the same image at once.
//! `cargo run -p imaged-client --example create_once -- NAME DIGEST SIZE`

use imaged_client::{Client, Descriptor, Digest, Labels};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, digest, size] = args.as_slice() else {
        return Err("usage: create_once NAME DIGEST SIZE".into());
    };
    let target = Descriptor {
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        digest: digest.parse::<Digest>()?,
        size: size.parse()?,
        annotations: Labels::new(),
    };
    let images = Client::connect_default()?.namespace("default")?;
    match images.put(name.clone(), target).if_absent().await {
        Ok(()) => println!("created {name}"),
        Err(e) if e.is_aborted() => println!("{name} exists already: {e}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

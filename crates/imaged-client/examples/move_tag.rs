//! Moves a tag to a new digest only if it still points where we last saw it
//! (compare-and-set), so a concurrent update is never overwritten.
//! `cargo run -p imaged-client --example move_tag -- NAME NEW_DIGEST SIZE`

use imaged_client::{Client, Descriptor, Digest};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, digest, size] = args.as_slice() else {
        return Err("usage: move_tag NAME NEW_DIGEST SIZE".into());
    };
    let images = Client::connect_default()?.namespace("default")?;
    let current = images.get(name).await?;
    let target = Descriptor {
        digest: digest.parse::<Digest>()?,
        size: size.parse()?,
        ..current.target.clone()
    };
    images
        .put(name.clone(), target)
        .if_digest(&current.target.digest)
        .await?;
    println!("{name}: {} → {digest}", current.target.digest);
    Ok(())
}

//! Reads one image: `cargo run -p imaged-client --example get -- NAME [NAMESPACE]`.
//! The daemon is found through `$IMAGED_ADDRESS` or the default socket.

use imaged_client::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().ok_or("usage: get NAME [NAMESPACE]")?;
    let ns = args.next().unwrap_or_else(|| "default".into());
    let images = Client::connect_default()?.namespace(&ns)?;
    match images.get(&name).await {
        Ok(image) => println!("{} → {} ({} bytes)", image.name, image.target.digest, image.target.size),
        Err(e) if e.is_not_found() => println!("{name} is not in namespace {ns}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

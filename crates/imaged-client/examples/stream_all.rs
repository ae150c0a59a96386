//! Streams every image of a namespace, however many, at the reader's pace.
//! `cargo run -p imaged-client --example stream_all -- [NAMESPACE]`

use futures_util::TryStreamExt;
use imaged_client::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ns = std::env::args().nth(1).unwrap_or_else(|| "default".into());
    let images = Client::connect_default()?.namespace(&ns)?;
    let mut stream = std::pin::pin!(images.list_all());
    let mut count = 0u64;
    while let Some(image) = stream.try_next().await? {
        count += 1;
        println!("{}", image.name);
    }
    eprintln!("{count} images");
    Ok(())
}

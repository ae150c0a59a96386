//! Lists images page by page, filtered and ordered.
//! `cargo run -p imaged-client --example list_pages -- [FILTER]`

use imaged_client::Client;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = std::env::args().nth(1);
    let images = Client::connect_default()?.namespace("default")?;
    let mut token = None;
    loop {
        let mut list = images.list().order_by("created_at desc").page_size(100);
        if let Some(f) = &filter {
            list = list.filter(f.clone());
        }
        if let Some(t) = token {
            list = list.page_token(t);
        }
        let page = list.page().await?;
        for image in &page.images {
            println!("{}\t{}", image.name, image.target.digest);
        }
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    Ok(())
}

//! `imagectl repos ls`: a namespace's repositories, each with how many
//! images it holds, the newest of them and its last change, read page by
//! page and printed as images are (`output::Printer`).

use futures_util::StreamExt;
use imaged_client::{Error, Images, Repository};

use crate::output::Printer;

/// Lists every repository matching `filters`, in `order_by`, read in pages
/// of `page_size` (the daemon's 1000 when not given), through `printer`.
pub async fn list(
    images: &Images,
    filters: Vec<String>,
    order_by: Option<String>,
    page_size: Option<u32>,
    mut printer: Printer<Repository>,
) -> Result<(), Error> {
    let mut list = images.repositories();
    for filter in filters {
        list = list.filter(filter);
    }
    if let Some(order_by) = order_by {
        list = list.order_by(order_by);
    }
    if let Some(size) = page_size {
        list = list.page_size(size);
    }
    let mut all = std::pin::pin!(list.all());
    while let Some(repository) = all.next().await {
        printer.print(&repository?);
    }
    printer.finish();
    Ok(())
}

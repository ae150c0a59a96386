//! `imagectl repos ls`: a namespace's repositories, each with how many
//! images it holds, the newest of them and its last change, as a table,
//! JSON or JSON lines, read page by page.

use std::io::{self, Write};
use std::time::SystemTime;

use futures_util::StreamExt;
use imaged_client::time::format_rfc3339;
use imaged_client::{Error, Images, Repository};
use serde_json::json;

use crate::output::{escape, print_table, relative_time};

/// How repositories are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RepoFormat {
    /// An aligned table.
    Table,
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Jsonl,
}

/// A repository as a JSON object, times in RFC 3339.
pub fn to_json(repository: &Repository) -> serde_json::Value {
    json!({
        "name": repository.name,
        "tags": repository.tags,
        "newest": repository.newest,
        "newest_updated_at": format_rfc3339(repository.newest_updated_at),
        "updated_at": format_rfc3339(repository.updated_at),
        "mod_revision": repository.mod_revision,
    })
}

/// Lists every repository matching `filters`, in `order_by`, read in pages
/// of `page_size` (the daemon's 1000 when not given), printed in `format`
/// (names only when `quiet`).
pub async fn list(
    images: &Images,
    filters: Vec<String>,
    order_by: Option<String>,
    page_size: Option<u32>,
    quiet: bool,
    format: RepoFormat,
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
    let mut out = io::BufWriter::new(io::stdout());
    let mut rows = Vec::new();
    let mut count = 0;
    let now = SystemTime::now();
    let mut all = std::pin::pin!(list.all());
    while let Some(repository) = all.next().await {
        let repository = repository?;
        let _ = match (quiet, format) {
            (true, _) => writeln!(out, "{}", escape(&repository.name)),
            (false, RepoFormat::Table) => {
                rows.push(vec![
                    escape(&repository.name).into_owned(),
                    repository.tags.to_string(),
                    escape(&repository.newest).into_owned(),
                    relative_time(repository.updated_at, now),
                ]);
                Ok(())
            }
            (false, RepoFormat::Json) => {
                let sep = if count == 0 { "[\n  " } else { ",\n  " };
                write!(out, "{sep}{}", to_json(&repository))
            }
            (false, RepoFormat::Jsonl) => writeln!(out, "{}", to_json(&repository)),
        };
        count += 1;
    }
    let _ = match (quiet, format) {
        (false, RepoFormat::Json) if count == 0 => writeln!(out, "[]"),
        (false, RepoFormat::Json) => writeln!(out, "\n]"),
        _ => Ok(()),
    };
    let _ = out.flush();
    if !quiet && format == RepoFormat::Table {
        print_table(&["REPOSITORY", "TAGS", "NEWEST", "CHANGED"], &rows);
    }
    Ok(())
}

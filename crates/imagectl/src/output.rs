//! How imagectl prints images and repositories: aligned tables that fit
//! the terminal, JSON, and JSON lines. JSON and JSON lines are written as items arrive, so a
//! listing of any size is never held in memory; a table needs every row to
//! align its columns.

use std::io::{self, Write};
use std::time::SystemTime;

use imaged_client::{Image, Labels, Repository};
use serde_json::json;

/// How images are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An aligned table.
    Table,
    /// One JSON array.
    Json,
    /// One JSON object (for a single image).
    JsonObject,
    /// One JSON object per line.
    Jsonl,
    /// Names only, one per line.
    Names,
}

/// What a [`Printer`] prints: a table row under its header, a JSON object
/// and a name.
pub trait Printable {
    /// The table's column names.
    const HEADER: &'static [&'static str];
    /// The name printed alone (`-q`).
    fn name(&self) -> &str;
    /// The table row; digests whole when `no_trunc`.
    fn row(&self, no_trunc: bool, now: SystemTime) -> Vec<String>;
    /// The JSON object.
    fn json(&self) -> serde_json::Value;
}

impl Printable for Image {
    const HEADER: &'static [&'static str] = &["NAME", "DIGEST", "MEDIA TYPE", "SIZE", "CREATED", "PROTECTED", "LABELS"];

    fn name(&self) -> &str {
        &self.name
    }

    fn row(&self, no_trunc: bool, now: SystemTime) -> Vec<String> {
        vec![
            escape(&self.name).into_owned(),
            match no_trunc {
                true => self.target.digest.to_string(),
                false => short_digest(self.target.digest.as_str()),
            },
            escape(&self.target.media_type).into_owned(),
            human_size(self.target.size),
            relative_time(self.created_at, now),
            if self.protected() { "yes" } else { "no" }.to_owned(),
            labels_text(&self.labels),
        ]
    }

    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
}

impl Printable for Repository {
    const HEADER: &'static [&'static str] = &["REPOSITORY", "TAGS", "NEWEST", "CHANGED"];

    fn name(&self) -> &str {
        &self.name
    }

    fn row(&self, _no_trunc: bool, now: SystemTime) -> Vec<String> {
        vec![
            escape(&self.name).into_owned(),
            self.tags.to_string(),
            escape(&self.newest).into_owned(),
            relative_time(self.updated_at, now),
        ]
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "tags": self.tags,
            "newest": self.newest,
            "newest_updated_at": imaged_client::time::format_rfc3339(self.newest_updated_at),
            "updated_at": imaged_client::time::format_rfc3339(self.updated_at),
            "mod_revision": self.mod_revision,
        })
    }
}

/// Prints images or repositories one at a time in a [`Format`].
pub struct Printer<T> {
    format: Format,
    no_trunc: bool,
    rows: Vec<Vec<String>>,
    count: usize,
    now: SystemTime,
    out: io::BufWriter<io::Stdout>,
    printing: std::marker::PhantomData<fn(&T)>,
}

impl<T: Printable> Printer<T> {
    /// A printer writing to stdout.
    pub fn new(format: Format) -> Printer<T> {
        Printer {
            format,
            no_trunc: false,
            rows: Vec::new(),
            count: 0,
            now: SystemTime::now(),
            out: io::BufWriter::new(io::stdout()),
            printing: std::marker::PhantomData,
        }
    }

    /// Whether a table shows whole digests rather than their first 12 hex
    /// characters.
    pub fn no_trunc(mut self, no_trunc: bool) -> Printer<T> {
        self.no_trunc = no_trunc;
        self
    }

    /// Prints (or, for a table, keeps) one item.
    pub fn print(&mut self, item: &T) {
        let out = &mut self.out;
        let _ = match self.format {
            Format::Table => {
                self.rows.push(item.row(self.no_trunc, self.now));
                Ok(())
            }
            Format::Json => {
                let sep = if self.count == 0 { "[\n  " } else { ",\n  " };
                write!(out, "{sep}{}", item.json())
            }
            Format::JsonObject => writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&item.json()).unwrap_or_default()
            ),
            Format::Jsonl => writeln!(out, "{}", item.json()),
            Format::Names => writeln!(out, "{}", escape(item.name())),
        };
        self.count += 1;
    }

    /// Ends the output: prints the table, or closes the JSON array.
    pub fn finish(mut self) {
        match self.format {
            Format::Table => {
                let rows = std::mem::take(&mut self.rows);
                let _ = self.out.flush();
                print_table(T::HEADER, &rows);
            }
            Format::Json if self.count == 0 => {
                let _ = writeln!(self.out, "[]");
            }
            Format::Json => {
                let _ = writeln!(self.out, "\n]");
            }
            _ => {}
        }
        let _ = self.out.flush();
    }
}

/// An image as a JSON object: full digest, size in bytes, RFC 3339 times.
pub fn to_json(image: &Image) -> serde_json::Value {
    json!({
        "name": image.name,
        "digest": image.target.digest.as_str(),
        "media_type": image.target.media_type,
        "size": image.target.size,
        "created_at": imaged_client::time::format_rfc3339(image.created_at),
        "updated_at": imaged_client::time::format_rfc3339(image.updated_at),
        "labels": image.labels,
        "protected": image.protected(),
        "annotations": image.target.annotations,
        "create_revision": image.create_revision,
        "mod_revision": image.mod_revision,
    })
}

/// Prints one watch event, at once: a table row (type, revision, name,
/// digest) or a JSON line with the whole image.
pub fn watch_event(event: &imaged_client::Event, jsonl: bool) {
    let kind = match event.kind {
        imaged_client::EventType::Added => "ADDED",
        imaged_client::EventType::Modified => "MODIFIED",
        imaged_client::EventType::Deleted => "DELETED",
    };
    let mut out = io::stdout().lock();
    let _ = if jsonl {
        let line = json!({"type": kind, "revision": event.revision, "image": to_json(&event.image)});
        writeln!(out, "{line}")
    } else {
        writeln!(
            out,
            "{kind:<8}  {:>8}  {}  {}",
            event.revision,
            escape(&event.image.name),
            event.image.target.digest
        )
    };
    let _ = out.flush();
}

/// `sha256:` and the first 12 hex characters.
pub fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) => format!("{algorithm}:{}", &hex[..hex.len().min(12)]),
        None => digest.to_owned(),
    }
}

/// A size in binary units: `512 B`, `1.2 KiB`, `3.4 GiB`.
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// How long ago `then` was: `12 seconds ago`, `3 hours ago`, `5 days ago`.
pub fn relative_time(then: SystemTime, now: SystemTime) -> String {
    let Ok(age) = now.duration_since(then) else {
        return "just now".into();
    };
    let s = age.as_secs();
    if s == 0 {
        return "just now".into();
    }
    let (n, unit) = match s {
        0..60 => (s, "second"),
        60..3600 => (s / 60, "minute"),
        3600..86_400 => (s / 3600, "hour"),
        86_400..2_592_000 => (s / 86_400, "day"),
        2_592_000..31_536_000 => (s / 2_592_000, "month"),
        _ => (s / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Labels as `k=v,k=v`, or `-`, with control characters escaped.
pub fn labels_text(labels: &Labels) -> String {
    if labels.is_empty() {
        return "-".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `text` with every control character escaped (`\n`, `\u{1b}`), so that
/// what a daemon stores can never move the cursor, recolour or retitle the
/// terminal it is printed to. Label values may hold any UTF-8.
pub fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// The terminal's width, if stdout is one (`$COLUMNS` wins).
fn terminal_width() -> Option<usize> {
    if let Some(columns) = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok()) {
        return Some(columns);
    }
    // SAFETY: TIOCGWINSZ fills a winsize struct we own; failure is checked.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) == 0 && size.ws_col > 0)
            .then_some(size.ws_col as usize)
    }
}

/// Prints an aligned table. On a terminal narrower than the table, the
/// widest columns are cut with `…` until it fits; piped output is never cut.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    if let Some(limit) = terminal_width() {
        let gaps = 2 * (widths.len().saturating_sub(1));
        while widths.iter().sum::<usize>() + gaps > limit {
            let (i, &widest) = widths.iter().enumerate().max_by_key(|(_, w)| **w).expect("columns");
            if widest <= 8 {
                break;
            }
            widths[i] = widest - 1;
        }
    }
    let mut out = io::BufWriter::new(io::stdout());
    let mut line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, &w))| {
                let cut = fit(cell, w);
                if i + 1 == cells.len() {
                    cut
                } else {
                    format!("{cut:<w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    let _ = out.flush();
}

/// `text` cut to `width` characters, ending in `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn control_characters_are_escaped_and_other_text_kept() {
        assert_eq!(escape("plain é ✓"), "plain é ✓");
        assert_eq!(escape("a\u{1b}[31mred\nline\u{7}"), "a\\u{1b}[31mred\\nline\\u{7}");
        let labels: Labels = [("k".to_string(), "v\r".to_string())].into();
        assert_eq!(labels_text(&labels), "k=v\\r");
    }

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1234), "1.2 KiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
        let now = SystemTime::now();
        assert_eq!(relative_time(now, now), "just now");
        assert_eq!(relative_time(now - Duration::from_secs(1), now), "1 second ago");
        assert_eq!(relative_time(now - Duration::from_secs(7200), now), "2 hours ago");
        assert_eq!(relative_time(now - Duration::from_secs(86_400 * 3), now), "3 days ago");
        assert_eq!(
            short_digest(&format!("sha256:{}", "a".repeat(64))),
            "sha256:aaaaaaaaaaaa"
        );
        assert_eq!(fit("abcdef", 4), "abc…");
    }
}

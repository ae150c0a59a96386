//! Admission of expensive work: which requests take a seat of the fair
//! queue ([`crate::shares::queue`]) in their caller's turn, and the
//! compiling of regular expressions, which such a request does on a
//! blocking thread, so that neither compiling nor reading takes an executor
//! thread from the calls beside it. A watcher's compiled filter is then
//! held against its caller's share of [`Resource::FilterMemory`].

use std::sync::Arc;

use super::Context;
use crate::error::Error;
use crate::filter::{Filter, Subject};
use crate::shares::queue::Seat;
use crate::shares::{Caller, Held, Resource, Shares};
use crate::store::{Query, RepositoryQuery};

/// Page sizes above this make a list expensive: it is admitted through the
/// fair queue, as a whole list and a list with regular expressions are.
pub const EXPENSIVE_PAGE: usize = 100;

/// A list's query, and whether it is expensive.
pub struct Admitted {
    /// The parsed query.
    pub query: Arc<Query>,
    /// Whether its pages go through the fair queue.
    pub expensive: bool,
    /// The seat its first page (or, for a whole list, all of it) holds.
    pub seat: Option<Seat>,
}

/// Whether `filters` hold a regular expression (`~=`) to compile.
fn has_regex(filters: &[String]) -> bool {
    filters.iter().any(|f| f.contains("~="))
}

/// Runs `parse` at once when the work is cheap; when `expensive`, after
/// taking a seat in `caller`'s turn, on a blocking thread, handing the seat
/// back with the result.
async fn in_turn<T: Send + 'static>(
    shares: &Shares,
    caller: Caller,
    expensive: bool,
    parse: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<(T, Option<Seat>), Error> {
    if !expensive {
        return Ok((parse()?, None));
    }
    let seat = shares.queue().enter(caller).await?;
    let parsed = tokio::task::spawn_blocking(parse)
        .await
        .map_err(|e| Error::Storage(format!("parsing the filters failed: {e}")))??;
    Ok((parsed, Some(seat)))
}

/// Parses a list's `filters` and `order_by` in `context`'s namespace,
/// admitted as `in_turn` says: expensive when `big` (a whole list, a big
/// page) or with a regular expression.
pub async fn admit(
    shares: &Shares,
    context: &Context,
    filters: Vec<String>,
    order_by: String,
    big: bool,
) -> Result<Admitted, Error> {
    let expensive = big || has_regex(&filters);
    let ns = context.namespace.clone();
    let parse = move || Ok(Query::new(ns, &filters, &order_by)?);
    let (query, seat) = in_turn(shares, context.caller, expensive, parse).await?;
    Ok(Admitted {
        query: Arc::new(query),
        expensive,
        seat,
    })
}

/// Parses a list of repositories' `filters` and `order_by` in `context`'s
/// namespace, admitted as a list of images is (see [`admit`]).
pub async fn admit_repositories(
    shares: &Shares,
    context: &Context,
    filters: Vec<String>,
    order_by: String,
    big: bool,
) -> Result<(Arc<RepositoryQuery>, Option<Seat>), Error> {
    let expensive = big || has_regex(&filters);
    let ns = context.namespace.clone();
    let parse = move || Ok(RepositoryQuery::new(ns, &filters, &order_by)?);
    let (query, seat) = in_turn(shares, context.caller, expensive, parse).await?;
    Ok((Arc::new(query), seat))
}

/// `filters` of `subject` (the request's field `field`), parsed in
/// `caller`'s turn when they hold a regular expression. The seat comes back
/// with the filter, for a caller that goes on to read under it.
pub async fn admitted_filter(
    shares: &Shares,
    caller: Caller,
    subject: Subject,
    field: &'static str,
    filters: Vec<String>,
) -> Result<(Filter, Option<Seat>), Error> {
    let expensive = has_regex(&filters);
    in_turn(shares, caller, expensive, move || {
        Ok(Filter::parse(subject, field, &filters)?)
    })
    .await
}

/// A watcher's filter, parsed as [`admitted_filter`] does, with what its
/// regular expressions take held against `caller`'s share of
/// [`Resource::FilterMemory`] for as long as the watcher lives (the
/// [`Held`] returned).
pub async fn watch_filter(
    shares: &Shares,
    caller: Caller,
    subject: Subject,
    filters: Vec<String>,
) -> Result<(Filter, Option<Held>), Error> {
    let (filter, seat) = admitted_filter(shares, caller, subject, "filters", filters).await?;
    drop(seat);
    if filter.regex_bytes() == 0 {
        return Ok((filter, None));
    }
    let held = shares.take(Resource::FilterMemory, caller, filter.regex_bytes() as u64)?;
    Ok((filter, Some(held)))
}

//! Planning a batch: the rules of each waiting job applied in order against
//! the engine overlaid with the batch's own earlier writes, before anything
//! is written.
//!
//! A key written twice in one batch (the namespace record, whose image count
//! every create and delete changes) is written once, with its final value:
//! the journal holds the batch whole or not at all, and replaying it sets
//! every key to its final value either way.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::SystemTime;

use imaged_types::Namespace;
use tokio::sync::oneshot;

use super::journal::Entry;
use crate::error::Error;
use crate::shares::Caller;
use crate::store::Quotas;
use crate::store::engine::{Backend, Bytes, EngineError};
use crate::store::layout::{Effect, TreeId, meta, prefix_end};
use crate::store::rules::image::Written;
use crate::store::rules::{self, Change, ImageOp, NamespaceOp, Records};

/// Most bytes of writes one batch journals. A batch ends early at this size
/// (the remaining jobs start the next one), so an entry always fits the
/// journal after a checkpoint: one op writes at most a bounded record, its
/// index keys and a namespace record, far less than the margin left.
pub const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// An op waiting for the log, where its answer goes, and its result once
/// planned.
pub struct Pending<O, T> {
    op: O,
    reply: oneshot::Sender<Result<T, Error>>,
    result: Option<Result<T, Error>>,
    /// Whose it is, for fair turns and the pace of writing.
    caller: Caller,
}

impl<O, T> Pending<O, T> {
    /// `op` of `caller`, answered on `reply`.
    pub fn new(op: O, reply: oneshot::Sender<Result<T, Error>>, caller: Caller) -> Self {
        Pending {
            op,
            reply,
            result: None,
            caller,
        }
    }

    /// Sends the planned result, or `failure` in place of a success when the
    /// batch could not be made durable.
    fn answer(self, failure: Option<&str>) {
        let result = match (self.result, failure) {
            (Some(Ok(_)), Some(failure)) => Err(Error::Storage(format!(
                "storage failed while the change was being made durable ({failure}); whether it survives a restart \
                 is unknown"
            ))),
            (Some(result), _) => result,
            (None, _) => Err(Error::Storage("the change was not planned".into())),
        };
        let _ = self.reply.send(result);
    }

    fn refuse(self, error: Error) {
        let _ = self.reply.send(Err(error));
    }
}

/// A change waiting for the log, typed by its concern.
// The channel carries jobs boxed (`Msg::Job`); a batch holds the few it
// plans by value, where the namespace variant's spare bytes cost nothing.
#[allow(clippy::large_enum_variant)]
pub enum Job {
    /// An image op, answered with an image.
    Image(Pending<ImageOp, Written>),
    /// A namespace op, answered with a namespace.
    Namespace(Pending<NamespaceOp, Namespace>),
}

impl Job {
    /// Whose job it is.
    pub fn caller(&self) -> Caller {
        match self {
            Job::Image(p) => p.caller,
            Job::Namespace(p) => p.caller,
        }
    }

    /// The uid whose job it is.
    pub fn flow(&self) -> u32 {
        self.caller().uid
    }

    /// Sends the job's planned result (see [`Pending::answer`]).
    pub fn answer(self, failure: Option<&str>) {
        match self {
            Job::Image(p) => p.answer(failure),
            Job::Namespace(p) => p.answer(failure),
        }
    }

    /// Refuses the job unplanned.
    pub fn refuse(self, error: Error) {
        match self {
            Job::Image(p) => p.refuse(error),
            Job::Namespace(p) => p.refuse(error),
        }
    }

    /// Applies the job's rules to `batch`, keeping its result.
    fn plan(
        &mut self,
        batch: &mut Batch<'_>,
        rev: &mut u64,
        now: SystemTime,
        changes: Option<&mut Vec<Change>>,
    ) -> Result<(), EngineError> {
        match self {
            Job::Image(p) => p.result = Some(rules::image::apply(batch, &p.op, rev, now, changes)?),
            Job::Namespace(p) => p.result = Some(rules::namespace::apply(batch, &p.op, rev, now, changes)?),
        }
        Ok(())
    }

    fn fail(&mut self, e: &EngineError) {
        let error = Error::Storage(format!("reading the store failed: {e}"));
        match self {
            Job::Image(p) => p.result = Some(Err(error)),
            Job::Namespace(p) => p.result = Some(Err(error)),
        }
    }
}

/// The engine as a batch being planned sees it: its own writes first.
struct Batch<'a> {
    backend: &'a Backend,
    quotas: Quotas,
    /// Where this batch's write of each key is in `effects`, by tree.
    /// Ordered, so the rules can ask for the last key under a prefix.
    written: [BTreeMap<Vec<u8>, usize>; TreeId::ALL.len()],
    effects: Vec<Effect>,
    bytes: usize,
}

impl Records for Batch<'_> {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        match self.written[tree as usize].get(key) {
            Some(&at) => Ok(self.effects[at].value.as_deref().map(Bytes::from)),
            None => self.backend.get(tree, key),
        }
    }

    fn quotas(&self) -> Quotas {
        self.quotas
    }

    fn last_with_prefix(&self, tree: TreeId, prefix: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let written = &self.written[tree as usize];
        let end = prefix_end(prefix).map_or(Bound::Unbounded, Bound::Excluded);
        let bounds = (Bound::Included(prefix.to_vec()), end);
        // The engine's last key that this batch has not written (a key it
        // wrote is the batch's to say), then the batch's last present key.
        let mut engine = None;
        for entry in self.backend.scan(tree, bounds.0.clone(), bounds.1.clone(), true) {
            let (key, _) = entry?;
            if !written.contains_key(&*key) {
                engine = Some(key.to_vec());
                break;
            }
        }
        let batch = written
            .range::<Vec<u8>, _>(bounds)
            .rev()
            .find(|(_, at)| self.effects[**at].value.is_some())
            .map(|(key, _)| key.clone());
        Ok(engine.max(batch))
    }

    fn put(&mut self, tree: TreeId, key: &[u8], value: Option<Vec<u8>>) {
        let value_bytes = |value: &Option<Vec<u8>>| value.as_ref().map_or(0, |v| 4 + v.len());
        match self.written[tree as usize].get(key) {
            Some(&at) => {
                let effect = &mut self.effects[at];
                self.bytes = self.bytes - value_bytes(&effect.value) + value_bytes(&value);
                effect.value = value;
            }
            None => {
                self.bytes += 10 + key.len() + value_bytes(&value);
                self.written[tree as usize].insert(key.to_vec(), self.effects.len());
                self.effects.push(Effect {
                    tree,
                    key: key.to_vec(),
                    value,
                });
            }
        }
    }
}

/// A planned batch: how many of the jobs it planned (a prefix), the journal
/// entry when anything changes, and the engine failure that cut planning
/// short, if any (every job planned then fails).
pub struct Plan {
    /// Jobs planned, from the front.
    pub planned: usize,
    /// The journal bytes each planned job added, in order.
    pub costs: Vec<u64>,
    /// The writes, when any op changed anything.
    pub entry: Option<Entry>,
    /// A read of the engine failed.
    pub error: Option<EngineError>,
}

/// Plans `jobs` in order after `revision` under `quotas`, until the journal
/// entry reaches [`MAX_ENTRY_BYTES`], pushing their changes to `changes`
/// when given.
/// Nothing is written. The revision is the entry's last write, so the
/// engine's recovered revision names the last batch it holds whole.
pub fn plan<'j>(
    backend: &Backend,
    jobs: impl Iterator<Item = &'j mut Job>,
    revision: u64,
    quotas: Quotas,
    mut changes: Option<&mut Vec<Change>>,
) -> Plan {
    let mut batch = Batch {
        backend,
        quotas,
        written: Default::default(),
        effects: Vec::new(),
        bytes: 0,
    };
    let mut rev = revision;
    let mut planned = 0;
    let mut costs = Vec::new();
    for job in jobs {
        planned += 1;
        let before = batch.bytes;
        if let Err(e) = job.plan(&mut batch, &mut rev, SystemTime::now(), changes.as_deref_mut()) {
            job.fail(&e);
            return Plan {
                planned,
                costs,
                entry: None,
                error: Some(e),
            };
        }
        costs.push(batch.bytes.saturating_sub(before) as u64);
        if batch.bytes >= MAX_ENTRY_BYTES {
            break;
        }
    }
    if rev == revision {
        return Plan {
            planned,
            costs,
            entry: None,
            error: None,
        };
    }
    batch.put(TreeId::Meta, meta::REVISION, Some(rev.to_be_bytes().to_vec()));
    Plan {
        planned,
        costs,
        entry: Some(Entry {
            first: revision + 1,
            last: rev,
            effects: batch.effects,
        }),
        error: None,
    }
}

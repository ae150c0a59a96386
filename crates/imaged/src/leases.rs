//! Leases: containerd's way for a client to hold content while it works
//! (`ctr images tag` takes one). imaged stores no content and collects no
//! garbage, so a lease protects nothing and is kept in memory only: leases
//! live as long as the daemon, and their ids, labels and resources behave as
//! containerd's do while it runs.
//!
//! Leases live in memory, so they are fair shares of their creator
//! ([`Resource::Leases`](crate::shares::Resource::Leases) and [`Resource::LeaseBytes`](crate::shares::Resource::LeaseBytes)): a uid holds at most
//! its share of the count and of the bytes, the admins keep a reserve of
//! both, and a lease gives back what it held when deleted, whoever deletes
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::SystemTime;

use imaged_types::image::{labels_bytes, validate_label_set};
use imaged_types::{Labels, NamespaceName, ValidationError};

use crate::error::Error;
use crate::filter::{Filter, NamespaceFields};
use crate::shares::{Caller, Held, Resource as SharedResource, Shares};

/// Longest lease id, in bytes.
pub const MAX_LEASE_ID_BYTES: usize = 256;

/// Checks a lease id: 1 to [`MAX_LEASE_ID_BYTES`] printable ASCII characters
/// other than spaces. containerd's client makes ids such as
/// `895982438-qrE_` (a time and URL-safe base64), so the stricter identifier
/// rule of namespaces does not apply.
fn validate_lease_id(id: &str) -> Result<(), ValidationError> {
    if id.is_empty() || id.len() > MAX_LEASE_ID_BYTES {
        return Err(ValidationError::new(
            "id",
            id,
            format!("must be 1 to {MAX_LEASE_ID_BYTES} bytes"),
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ValidationError::new("id", id, "must be printable ASCII without spaces"));
    }
    Ok(())
}

/// Most resources one lease references.
pub const MAX_RESOURCES_PER_LEASE: usize = 4096;
/// Longest resource, id plus type, in bytes.
pub const MAX_RESOURCE_BYTES: usize = 1024;
/// Largest answer a List of leases builds, in bytes: past it the List is
/// refused, asking for a narrower filter, rather than built and then refused
/// by the transport.
pub const MAX_LIST_BYTES: usize = 8 * 1024 * 1024;

/// A lease as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Its id.
    pub id: String,
    /// When it was created.
    pub created_at: SystemTime,
    /// Its labels.
    pub labels: Labels,
}

/// A resource a lease references: an id and a type such as `content`.
pub type Resource = (String, String);

#[derive(Debug)]
struct Entry {
    lease: Lease,
    resources: BTreeSet<Resource>,
    /// The creator's share of the leases.
    _count: Held,
    /// The creator's share of the bytes: its id and labels, and its
    /// resources as they come and go.
    bytes: Held,
}

impl Entry {
    /// What the lease costs in bytes, without resources.
    fn bytes(lease: &Lease) -> usize {
        lease.id.len() + labels_bytes(&lease.labels)
    }
}

/// The leases of every namespace.
#[derive(Debug, Default)]
struct Table {
    leases: BTreeMap<(NamespaceName, String), Entry>,
}

/// The leases of every namespace, and the shares they take.
#[derive(Debug)]
pub struct LeaseTable {
    table: Mutex<Table>,
    shares: Shares,
}

impl Default for LeaseTable {
    /// A table with no bounds but its own.
    fn default() -> Self {
        LeaseTable::new(Shares::unbounded())
    }
}

fn not_found(ns: &NamespaceName, id: &str) -> Error {
    Error::NotFound(format!("lease {id:?} not found in namespace {:?}", ns.as_str()))
}

impl LeaseTable {
    /// An empty table whose leases take their creators' shares of `shares`.
    pub fn new(shares: Shares) -> LeaseTable {
        LeaseTable {
            table: Mutex::default(),
            shares,
        }
    }

    /// Creates a lease for `caller`; `id` is generated when empty.
    pub fn create(&self, caller: Caller, ns: &NamespaceName, id: String, mut labels: Labels) -> Result<Lease, Error> {
        let id = if id.is_empty() {
            crate::ids::lease_id().map_err(|e| Error::Storage(format!("generating a lease id: {e}")))?
        } else {
            id
        };
        validate_lease_id(&id)?;
        labels.retain(|_, v| !v.is_empty());
        validate_label_set("labels", &labels)?;
        let mut table = self.lock();
        let key = (ns.clone(), id.clone());
        if table.leases.contains_key(&key) {
            return Err(Error::AlreadyExists(format!(
                "lease {id:?} already exists in namespace {:?}",
                ns.as_str()
            )));
        }
        let lease = Lease {
            id,
            created_at: SystemTime::now(),
            labels,
        };
        let count = self.shares.take(SharedResource::Leases, caller, 1)?;
        let bytes = self
            .shares
            .take(SharedResource::LeaseBytes, caller, Entry::bytes(&lease) as u64)?;
        table.leases.insert(
            key,
            Entry {
                lease: lease.clone(),
                resources: BTreeSet::new(),
                _count: count,
                bytes,
            },
        );
        Ok(lease)
    }

    /// Deletes a lease.
    pub fn delete(&self, ns: &NamespaceName, id: &str) -> Result<(), Error> {
        // Its shares go back to its creator as it drops.
        self.lock()
            .leases
            .remove(&(ns.clone(), id.to_owned()))
            .ok_or_else(|| not_found(ns, id))?;
        Ok(())
    }

    /// The leases of `ns` matching `filter`, ordered by id; refused past
    /// [`MAX_LIST_BYTES`] before the answer grows further.
    pub fn list(&self, ns: &NamespaceName, filter: &Filter) -> Result<Vec<Lease>, Error> {
        let table = self.lock();
        let mut bytes = 0;
        let mut found = Vec::new();
        let matching = table
            .leases
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|(_, entry)| &entry.lease)
            .filter(|lease| {
                filter.matches(&NamespaceFields {
                    name: &lease.id,
                    labels: &lease.labels,
                })
            });
        for lease in matching {
            // Each label and the lease itself cost a few bytes of framing.
            bytes += Entry::bytes(lease) + 8 * (lease.labels.len() + 2);
            if bytes > MAX_LIST_BYTES {
                return Err(Error::ResourceExhausted(format!(
                    "the leases matching take more than the {MAX_LIST_BYTES} bytes one answer may hold; narrow \
                     the filter"
                )));
            }
            found.push(lease.clone());
        }
        Ok(found)
    }

    /// References `resource` from lease `id`.
    pub fn add_resource(&self, ns: &NamespaceName, id: &str, resource: Resource) -> Result<(), Error> {
        check_resource(&resource)?;
        let mut table = self.lock();
        let key = (ns.clone(), id.to_owned());
        let entry = table.leases.get_mut(&key).ok_or_else(|| not_found(ns, id))?;
        if entry.resources.contains(&resource) {
            return Ok(());
        }
        if entry.resources.len() >= MAX_RESOURCES_PER_LEASE {
            return Err(Error::ResourceExhausted(format!(
                "lease {id:?} references {MAX_RESOURCES_PER_LEASE} resources already"
            )));
        }
        // The lease's creator pays, whoever adds.
        entry.bytes.grow(resource_bytes(&resource) as u64)?;
        entry.resources.insert(resource);
        Ok(())
    }

    /// Drops the reference to `resource` from lease `id`.
    pub fn delete_resource(&self, ns: &NamespaceName, id: &str, resource: &Resource) -> Result<(), Error> {
        let mut table = self.lock();
        let entry = table
            .leases
            .get_mut(&(ns.clone(), id.to_owned()))
            .ok_or_else(|| not_found(ns, id))?;
        if entry.resources.remove(resource) {
            entry.bytes.shrink(resource_bytes(resource) as u64);
        }
        Ok(())
    }

    /// The resources lease `id` references.
    pub fn resources(&self, ns: &NamespaceName, id: &str) -> Result<Vec<Resource>, Error> {
        let table = self.lock();
        let entry = table
            .leases
            .get(&(ns.clone(), id.to_owned()))
            .ok_or_else(|| not_found(ns, id))?;
        Ok(entry.resources.iter().cloned().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_resource((id, kind): &Resource) -> Result<(), Error> {
    if id.is_empty() {
        return Err(ValidationError::new("resource.id", id, "must not be empty").into());
    }
    if kind.is_empty() {
        return Err(ValidationError::new("resource.type", kind, "must not be empty").into());
    }
    let len = id.len() + kind.len();
    if len > MAX_RESOURCE_BYTES {
        return Err(ValidationError::new(
            "resource.id",
            id,
            format!("id plus type is {len} bytes, more than {MAX_RESOURCE_BYTES}"),
        )
        .into());
    }
    Ok(())
}

/// What a resource costs in bytes.
fn resource_bytes((id, kind): &Resource) -> usize {
    id.len() + kind.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Caller = Caller {
        uid: 1000,
        admin: false,
    };

    #[test]
    fn lease_lifecycle() {
        let shares = Shares::unbounded();
        let table = LeaseTable::new(shares.clone());
        let ns = NamespaceName::parse("ns", "default").unwrap();
        let other = NamespaceName::parse("ns", "other").unwrap();
        let generated = table.create(ME, &ns, String::new(), Labels::new()).unwrap();
        assert!(!generated.id.is_empty());
        table.create(ME, &ns, "mine".into(), Labels::new()).unwrap();
        assert!(matches!(
            table.create(ME, &ns, "mine".into(), Labels::new()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            table.create(ME, &ns, "bad id".into(), Labels::new()),
            Err(Error::Invalid(_))
        ));
        table.create(ME, &ns, String::new(), Labels::new()).unwrap();
        // An id as containerd's client makes them: a time and URL-safe base64.
        table.create(ME, &ns, "895982438-qrE_".into(), Labels::new()).unwrap();
        table.create(ME, &ns, "1-ab==".into(), Labels::new()).unwrap();
        table.create(ME, &other, "mine".into(), Labels::new()).unwrap();
        assert_eq!(table.list(&ns, &Filter::all()).unwrap().len(), 5);

        table
            .add_resource(&ns, "mine", ("sha256:x".into(), "content".into()))
            .unwrap();
        assert_eq!(table.resources(&ns, "mine").unwrap().len(), 1);
        assert!(table.resources(&other, "mine").unwrap().is_empty());
        table
            .delete_resource(&ns, "mine", &("sha256:x".into(), "content".into()))
            .unwrap();
        assert!(table.resources(&ns, "mine").unwrap().is_empty());

        table.delete(&ns, "mine").unwrap();
        assert!(matches!(table.delete(&ns, "mine"), Err(Error::NotFound(_))));
        assert_eq!(table.list(&other, &Filter::all()).unwrap().len(), 1);
        let held: usize = [&ns, &other]
            .iter()
            .flat_map(|n| table.list(n, &Filter::all()).unwrap())
            .map(|lease| Entry::bytes(&lease))
            .sum();
        assert_eq!(shares.pool(SharedResource::LeaseBytes).held_by(1000), held as u64);
        assert_eq!(shares.pool(SharedResource::Leases).held_by(1000), 5);
    }

    #[test]
    fn a_uid_is_bounded_to_its_share_of_bytes_and_a_list_before_it_is_built() {
        use crate::shares::{Bound, ShareLimits};
        const SHARE: usize = 16 << 20;
        let mut limits = ShareLimits::unbounded();
        limits.bounds = vec![(SharedResource::LeaseBytes, Bound::new(64 << 20, SHARE as u64, 10))];
        let shares = Shares::new(&limits);
        let table = LeaseTable::new(shares.clone());
        let ns = NamespaceName::parse("ns", "default").unwrap();
        let big: Labels = (0..16)
            .map(|i| (format!("k{i:02}"), "v".repeat(limits_label() - 3)))
            .collect();
        let per_lease = labels_bytes(&big);
        let mut made = 0;
        let refused = loop {
            match table.create(ME, &ns, format!("l{made}"), big.clone()) {
                Ok(_) => made += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(refused, Error::ResourceExhausted(_)), "{refused:?}");
        assert!(refused.to_string().contains("lease_mb_per_uid"), "{refused}");
        assert!((SHARE / (per_lease + 6)..=SHARE / per_lease).contains(&made), "{made}");
        // Another uid has a share of its own.
        let other = Caller {
            uid: 1001,
            admin: false,
        };
        table.create(other, &ns, "theirs".into(), big.clone()).unwrap();
        // Far more than one answer holds: refused by name, not built.
        let err = table.list(&ns, &Filter::all()).unwrap_err();
        assert!(err.to_string().contains("narrow the filter"), "{err}");
        // Deleting gives the bytes back.
        table.delete(&ns, "l0").unwrap();
        table.create(ME, &ns, "again".into(), big).unwrap();
        // A lease's labels, added up, are bounded as a namespace's are.
        let too_many: Labels = (0..17).map(|i| (format!("k{i:02}"), "v".repeat(4000))).collect();
        let err = table.create(ME, &ns, "x".into(), too_many).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }

    fn limits_label() -> usize {
        imaged_types::image::limits::MAX_LABEL_BYTES
    }
}

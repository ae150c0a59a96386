//! Leases: containerd's way for a client to hold content while it works
//! (`ctr images tag` takes one). imaged stores no content and collects no
//! garbage, so a lease protects nothing and is kept in memory only: leases
//! live as long as the daemon, and their ids, labels and resources behave as
//! containerd's do while it runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::SystemTime;

use imaged_types::image::validate_labels;
use imaged_types::{Labels, NamespaceName, ValidationError};

use crate::error::Error;
use crate::filter::{Filter, NamespaceFields};

/// Most leases held at once over all namespaces, so a client cannot grow the
/// table without bound.
pub const MAX_LEASES: usize = 65_536;
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
}

/// The leases of every namespace.
#[derive(Debug, Default)]
pub struct LeaseTable {
    leases: Mutex<BTreeMap<(NamespaceName, String), Entry>>,
}

fn not_found(ns: &NamespaceName, id: &str) -> Error {
    Error::NotFound(format!("lease {id:?} not found in namespace {:?}", ns.as_str()))
}

impl LeaseTable {
    /// Creates a lease; `id` is generated when empty.
    pub fn create(&self, ns: &NamespaceName, id: String, mut labels: Labels) -> Result<Lease, Error> {
        let id = if id.is_empty() {
            crate::ids::lease_id().map_err(|e| Error::Storage(format!("generating a lease id: {e}")))?
        } else {
            id
        };
        validate_lease_id(&id)?;
        labels.retain(|_, v| !v.is_empty());
        validate_labels("labels", &labels)?;
        let mut leases = self.lock();
        if leases.len() >= MAX_LEASES {
            return Err(Error::ResourceExhausted(format!(
                "{MAX_LEASES} leases are held already; delete some first"
            )));
        }
        let key = (ns.clone(), id.clone());
        if leases.contains_key(&key) {
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
        leases.insert(
            key,
            Entry {
                lease: lease.clone(),
                resources: BTreeSet::new(),
            },
        );
        Ok(lease)
    }

    /// Deletes a lease.
    pub fn delete(&self, ns: &NamespaceName, id: &str) -> Result<(), Error> {
        self.lock()
            .remove(&(ns.clone(), id.to_owned()))
            .map(|_| ())
            .ok_or_else(|| not_found(ns, id))
    }

    /// The leases of `ns` matching `filter`, ordered by id.
    pub fn list(&self, ns: &NamespaceName, filter: &Filter) -> Vec<Lease> {
        self.lock()
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|(_, entry)| &entry.lease)
            .filter(|lease| {
                filter.matches(&NamespaceFields {
                    name: &lease.id,
                    labels: &lease.labels,
                })
            })
            .cloned()
            .collect()
    }

    /// References `resource` from lease `id`.
    pub fn add_resource(&self, ns: &NamespaceName, id: &str, resource: Resource) -> Result<(), Error> {
        check_resource(&resource)?;
        let mut leases = self.lock();
        let entry = leases
            .get_mut(&(ns.clone(), id.to_owned()))
            .ok_or_else(|| not_found(ns, id))?;
        if entry.resources.len() >= MAX_RESOURCES_PER_LEASE && !entry.resources.contains(&resource) {
            return Err(Error::ResourceExhausted(format!(
                "lease {id:?} references {MAX_RESOURCES_PER_LEASE} resources already"
            )));
        }
        entry.resources.insert(resource);
        Ok(())
    }

    /// Drops the reference to `resource` from lease `id`.
    pub fn delete_resource(&self, ns: &NamespaceName, id: &str, resource: &Resource) -> Result<(), Error> {
        let mut leases = self.lock();
        let entry = leases
            .get_mut(&(ns.clone(), id.to_owned()))
            .ok_or_else(|| not_found(ns, id))?;
        entry.resources.remove(resource);
        Ok(())
    }

    /// The resources lease `id` references.
    pub fn resources(&self, ns: &NamespaceName, id: &str) -> Result<Vec<Resource>, Error> {
        let leases = self.lock();
        let entry = leases
            .get(&(ns.clone(), id.to_owned()))
            .ok_or_else(|| not_found(ns, id))?;
        Ok(entry.resources.iter().cloned().collect())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(NamespaceName, String), Entry>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn check_resource((id, kind): &Resource) -> Result<(), Error> {
    if id.is_empty() {
        return Err(ValidationError::new("resource.id", id, "must not be empty").into());
    }
    if kind.is_empty() {
        return Err(ValidationError::new("resource.type", kind, "must not be empty").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lifecycle() {
        let table = LeaseTable::default();
        let ns = NamespaceName::parse("ns", "default").unwrap();
        let other = NamespaceName::parse("ns", "other").unwrap();
        let generated = table.create(&ns, String::new(), Labels::new()).unwrap();
        assert!(!generated.id.is_empty());
        table.create(&ns, "mine".into(), Labels::new()).unwrap();
        assert!(matches!(
            table.create(&ns, "mine".into(), Labels::new()),
            Err(Error::AlreadyExists(_))
        ));
        assert!(matches!(
            table.create(&ns, "bad id".into(), Labels::new()),
            Err(Error::Invalid(_))
        ));
        table.create(&ns, String::new(), Labels::new()).unwrap();
        // An id as containerd's client makes them: a time and URL-safe base64.
        table.create(&ns, "895982438-qrE_".into(), Labels::new()).unwrap();
        table.create(&ns, "1-ab==".into(), Labels::new()).unwrap();
        table.create(&other, "mine".into(), Labels::new()).unwrap();
        assert_eq!(table.list(&ns, &Filter::all()).len(), 5);

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
        assert_eq!(table.list(&other, &Filter::all()).len(), 1);
    }
}

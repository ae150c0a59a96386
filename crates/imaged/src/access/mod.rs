//! Access control by peer credentials: who may call what, in which
//! namespace.
//!
//! Every connection's peer is known from the kernel (SO_PEERCRED and
//! SO_PEERGROUPS, [`Peer`]), so the policy needs no tokens. The policy grants
//! roles to uids, gids or everyone, for every namespace or for named ones:
//! - **reader**: Get, List, ListStream, ListRepositories, Watch, Subscribe
//!   and the like;
//! - **writer**: reads, and changes to images and namespaces;
//! - **admin**: everything.
//!
//! root, imaged's own user and the socket's group are always admins; nobody
//! else is granted anything unless the configuration says so. What each
//! method needs is one table ([`methods`]); one tower layer ([`layer`]) in
//! front of every service applies it, so no handler checks access itself.

pub mod layer;
pub mod methods;

use serde::{Deserialize, Serialize};

use imaged_types::NamespaceName;

pub use crate::transport::peer::Peer;
pub use layer::AccessLayer;
pub use methods::{Level, Need, Scope};

/// A role, from least to most: each one may do what the ones below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads: Get, List, ListStream, Watch, Subscribe, Version.
    Reader,
    /// Reads, and changes to images and namespaces.
    Writer,
    /// Everything.
    Admin,
}

impl Role {
    /// The role's name, as the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// One `[[access]]` entry of the configuration: a role for some callers,
/// in every namespace or in the named ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// What the callers may do.
    pub role: Role,
    /// Callers whose uid is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uids: Vec<u32>,
    /// Callers whose primary or supplementary group is one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gids: Vec<u32>,
    /// Every caller that can connect to the socket.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub everyone: bool,
    /// Only in these namespaces; absent, in every namespace. A grant limited
    /// to namespaces covers only calls that act in one namespace, named by
    /// the call's `containerd-namespace` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

impl Grant {
    fn matches(&self, peer: &Peer) -> bool {
        self.everyone || self.uids.contains(&peer.uid) || self.gids.iter().any(|gid| peer.in_group(*gid))
    }

    fn covers(&self, scope: Scope, namespace: Option<&NamespaceName>) -> bool {
        match (&self.namespaces, scope, namespace) {
            (None, _, _) => true,
            (Some(names), Scope::Namespace, Some(ns)) => names.iter().any(|name| name == ns.as_str()),
            _ => false,
        }
    }

    /// Checks what the configuration cannot: someone is named, and every
    /// namespace name is one. `at` says where the grant is, for the message.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if !self.everyone && self.uids.is_empty() && self.gids.is_empty() {
            return Err(format!(
                "{at}: grants {} to nobody: give uids, gids or everyone = true",
                self.role.name()
            ));
        }
        for name in self.namespaces.iter().flatten() {
            NamespaceName::parse("namespaces", name).map_err(|e| format!("{at}: {e}"))?;
        }
        Ok(())
    }
}

/// The access policy: the configured grants, and the admins every policy
/// has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    grants: Vec<Grant>,
    /// imaged's own user: it can read the data directory anyway.
    own_uid: u32,
    /// The socket's group, whose members were let connect on purpose.
    socket_gid: Option<u32>,
}

impl Policy {
    /// A policy of `grants` (each already validated), on a socket whose
    /// group is `socket_gid`.
    pub fn new(grants: Vec<Grant>, socket_gid: Option<u32>) -> Policy {
        Policy {
            grants,
            own_uid: nix::unistd::geteuid().as_raw(),
            socket_gid,
        }
    }

    /// Whether `peer` may make a call that needs `need`, acting in
    /// `namespace` (`None` when the call names none, or names it badly: then
    /// only a grant over every namespace covers it).
    pub fn allows(&self, peer: &Peer, need: Need, namespace: Option<&NamespaceName>) -> bool {
        if self.is_builtin_admin(peer) {
            return true;
        }
        let wanted = match need.level {
            Level::Open => Role::Reader,
            Level::Read => Role::Reader,
            Level::Write => Role::Writer,
            Level::Admin => Role::Admin,
        };
        self.grants.iter().filter(|grant| grant.matches(peer)).any(|grant| {
            grant.role >= wanted
                && match need.level {
                    // Open methods describe the daemon, never data: any grant
                    // at all lets a caller ask them.
                    Level::Open => true,
                    Level::Admin => grant.namespaces.is_none(),
                    Level::Read | Level::Write => grant.covers(need.scope, namespace),
                }
        })
    }

    /// Whether `peer` is root, imaged's own user or in the socket's group:
    /// an admin whatever the grants say.
    pub fn is_builtin_admin(&self, peer: &Peer) -> bool {
        peer.uid == 0 || peer.uid == self.own_uid || self.socket_gid.is_some_and(|gid| peer.in_group(gid))
    }

    /// The most the policy grants to everyone, if anything: what a socket
    /// every local user can connect to gives away.
    pub fn everyone_gets(&self) -> Option<Role> {
        self.grants
            .iter()
            .filter(|grant| grant.everyone)
            .map(|grant| grant.role)
            .max()
    }

    /// The configured grants.
    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
            groups: groups.to_vec(),
        }
    }

    fn ns(name: &str) -> NamespaceName {
        NamespaceName::parse("ns", name).unwrap()
    }

    fn need(level: Level, scope: Scope) -> Need {
        Need { level, scope }
    }

    #[test]
    fn grants_by_uid_gid_namespace_and_role() {
        let grants = vec![
            Grant {
                role: Role::Writer,
                uids: vec![1000],
                gids: vec![],
                everyone: false,
                namespaces: Some(vec!["user-1000".into()]),
            },
            Grant {
                role: Role::Reader,
                uids: vec![],
                gids: vec![100],
                everyone: false,
                namespaces: None,
            },
        ];
        let policy = Policy::new(grants, Some(4242));
        let user = peer(1000, 100, &[]);
        let write_ns = need(Level::Write, Scope::Namespace);
        let read_ns = need(Level::Read, Scope::Namespace);
        assert!(policy.allows(&user, write_ns, Some(&ns("user-1000"))));
        assert!(!policy.allows(&user, write_ns, Some(&ns("default"))));
        assert!(!policy.allows(&user, write_ns, None));
        assert!(policy.allows(&user, read_ns, Some(&ns("default"))));
        assert!(!policy.allows(&user, need(Level::Write, Scope::Global), None));
        assert!(!policy.allows(&user, need(Level::Admin, Scope::Global), None));
        // A supplementary group counts; a stranger gets nothing, not even
        // the open methods.
        assert!(policy.allows(&peer(2000, 2000, &[100]), read_ns, Some(&ns("x"))));
        let stranger = peer(3000, 3000, &[]);
        assert!(!policy.allows(&stranger, need(Level::Open, Scope::Global), None));
        assert!(!policy.allows(&stranger, read_ns, Some(&ns("default"))));
        // root and the socket's group are admins.
        assert!(policy.allows(&peer(0, 0, &[]), need(Level::Admin, Scope::Global), None));
        assert!(policy.allows(&peer(5000, 5000, &[4242]), need(Level::Admin, Scope::Global), None));
        assert_eq!(policy.everyone_gets(), None);
    }

    #[test]
    fn a_grant_must_name_someone_and_real_namespaces() {
        let mut grant = Grant {
            role: Role::Reader,
            uids: vec![],
            gids: vec![],
            everyone: false,
            namespaces: None,
        };
        assert!(grant.validate("access[0]").unwrap_err().contains("nobody"));
        grant.everyone = true;
        grant.namespaces = Some(vec!["bad name".into()]);
        assert!(grant.validate("access[0]").unwrap_err().contains("bad name"));
    }
}

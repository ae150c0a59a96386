//! What each gRPC method needs: the one table the access layer reads.
//!
//! A method either acts in the namespace its call names (the
//! `containerd-namespace` header; the seed API's default is `default`), or
//! across namespaces. Namespaces themselves, events and anything not listed
//! here are across namespaces, so only a grant over every namespace covers
//! them. A method the table does not know needs admin: a service added later
//! is closed until it is listed.

use crate::transport::context::Namespacing;

/// How much a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Describes the daemon, never data (Version, introspection): any
    /// granted caller.
    Open,
    /// Reads data.
    Read,
    /// Changes data.
    Write,
    /// Everything else.
    Admin,
}

/// Where a method acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// In the one namespace its call names.
    Namespace,
    /// Across namespaces.
    Global,
}

/// What a call of one method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    /// How much.
    pub level: Level,
    /// Where.
    pub scope: Scope,
}

const SEED: &str = "containerd.v1.Images";
const IMAGES: &str = "containerd.services.images.v1.Images";
const NAMESPACES: &str = "containerd.services.namespaces.v1.Namespaces";
const EVENTS: &str = "containerd.services.events.v1.Events";
const LEASES: &str = "containerd.services.leases.v1.Leases";
const VERSION: &str = "containerd.services.version.v1.Version";
const INTROSPECTION: &str = "containerd.services.introspection.v1.Introspection";
const ADMIN: &str = "imaged.admin.v1.Admin";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// The methods that need admin on purpose: the test of the table knows them
/// from the ones that fall through to admin by mistake.
pub const ADMIN_ONLY: &[&str] = &["imaged.admin.v1.Admin/Backup", "imaged.admin.v1.Admin/Compact"];

/// What a call to `path` (`/package.Service/Method`) needs, which
/// namespace a call that names none acts in (as its handler reads it), and
/// whether the method is one the daemon knows.
pub fn need_of(path: &str) -> (Need, Namespacing, bool) {
    use Level::*;
    use Scope::*;
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    let need = |level, scope| Need { level, scope };
    let found = match (service, method) {
        (SEED, "Get" | "List" | "ListStream" | "Watch" | "ListRepositories") => need(Read, Namespace),
        (SEED, "Put" | "Delete") => need(Write, Namespace),
        (IMAGES, "Get" | "List") => need(Read, Namespace),
        (IMAGES, "Create" | "Update" | "Delete") => need(Write, Namespace),
        (NAMESPACES, "Get" | "List") => need(Read, Global),
        (NAMESPACES, "Create" | "Update" | "Delete") => need(Write, Global),
        (EVENTS, "Subscribe") => need(Read, Global),
        (EVENTS, "Publish" | "Forward") => need(Write, Global),
        (LEASES, "List" | "ListResources") => need(Read, Namespace),
        (LEASES, "Create" | "Delete" | "AddResource" | "DeleteResource") => need(Write, Namespace),
        (ADMIN, "Status") => need(Read, Global),
        // They describe the daemon and its API, never data: open to anyone
        // the socket lets in and any grant covers.
        (VERSION, _) | (INTROSPECTION, _) | (HEALTH, _) | (REFLECTION, _) | (REFLECTION_ALPHA, _) => need(Open, Global),
        (ADMIN, "Backup" | "Compact") => need(Admin, Global),
        _ => return (need(Admin, Global), Namespacing::Required, false),
    };
    let defaults = if service == SEED {
        Namespacing::DefaultsToDefault
    } else {
        Namespacing::Required
    };
    (found, defaults, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every method of every proto the daemon serves is in the table: a
    /// method that fell through to admin by a typo would lock readers out.
    #[test]
    fn every_served_method_is_listed() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
        let mut found = 0;
        for file in proto_files(std::path::Path::new(root)) {
            let text = std::fs::read_to_string(&file).unwrap();
            let package = text
                .lines()
                .find_map(|l| l.trim().strip_prefix("package "))
                .map(|p| p.trim_end_matches(';').trim().to_string());
            let mut service = None;
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().map(str::to_string);
                }
                if let (Some(rest), Some(package), Some(service)) = (line.strip_prefix("rpc "), &package, &service) {
                    let method = rest.split(['(', ' ']).next().unwrap();
                    let full = format!("{package}.{service}/{method}");
                    let (need, _, known) = need_of(&format!("/{full}"));
                    assert!(known, "{full} is not known");
                    assert_eq!(
                        need.level == Level::Admin,
                        ADMIN_ONLY.contains(&full.as_str()),
                        "{full} is not in the table"
                    );
                    found += 1;
                }
            }
        }
        assert!(found >= 29, "found {found} methods");
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert_eq!(need_of(open).0.level, Level::Open, "{open}");
        }
        assert_eq!(need_of("/containerd.v1.Images/Backup").0.level, Level::Admin);
        assert_eq!(need_of("nonsense").0.level, Level::Admin);
        assert!(
            !need_of("/containerd.v1.Images/Backup").2,
            "an unknown method is one kind"
        );
    }

    fn proto_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(proto_files(&path));
            } else if path.extension().is_some_and(|e| e == "proto") {
                out.push(path);
            }
        }
        out
    }
}

//! Repositories: the name an image has before its last `:tag` or
//! `@digest`, and what the store keeps of each ([`Repository`]).
//!
//! The rule follows the image reference grammar of the OCI distribution
//! spec and Docker: a digest follows the first `@`; a tag follows the last
//! `:` that has no `/` after it, so the port in `localhost:5000/app` is part
//! of the repository and `localhost:5000/app:1` is a tag of
//! `localhost:5000/app`. A name with neither is its own repository.

use std::time::SystemTime;

/// The repository of image `name`: the name before its last `:tag` or
/// `@digest`. Always a prefix of `name`, followed in it by nothing, `:` or
/// `@`.
pub fn repository_of(name: &str) -> &str {
    let name = name.split_once('@').map_or(name, |(before, _)| before);
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

/// A repository of a namespace, as the store keeps it: kept up to date by
/// every write of one of its images, in that write's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The repository's name.
    pub name: String,
    /// How many images (tags and digests) it holds; always at least 1.
    pub tags: u64,
    /// Its image updated last (by `updated_at`, ties by the greater name).
    pub newest: String,
    /// When `newest` was updated.
    pub newest_updated_at: SystemTime,
    /// When one of its images was last created, changed or deleted.
    pub updated_at: SystemTime,
    /// The store revision of that change.
    pub mod_revision: u64,
}

#[cfg(test)]
mod tests {
    use super::repository_of;

    #[test]
    fn the_repository_is_the_name_before_its_tag_or_digest() {
        let digest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for (name, repository) in [
            ("docker.io/library/redis:7", "docker.io/library/redis"),
            ("redis", "redis"),
            ("redis:7", "redis"),
            ("localhost:5000/app", "localhost:5000/app"),
            ("localhost:5000/app:1.2", "localhost:5000/app"),
            ("localhost:5000", "localhost"),
            ("a:b:c", "a:b"),
            ("", ""),
            (":7", ""),
        ] {
            assert_eq!(repository_of(name), repository, "{name}");
        }
        assert_eq!(repository_of(&format!("redis@{digest}")), "redis");
        assert_eq!(repository_of(&format!("redis:7@{digest}")), "redis");
        assert_eq!(
            repository_of(&format!("localhost:5000/app:1@{digest}")),
            "localhost:5000/app"
        );
    }
}

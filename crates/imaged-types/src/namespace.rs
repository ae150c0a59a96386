//! [`NamespaceName`]: containerd's identifier rule for namespace names (and,
//! through [`validate_identifier`], lease ids).
//!
//! 1 to 76 characters; ASCII letters and digits, in components joined by a
//! single `.`, `_` or `-` (`^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$`).

use std::fmt;

use crate::error::ValidationError;
use crate::image::Labels;

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace's name.
    pub name: NamespaceName,
    /// Labels on the namespace; empty values are never stored.
    pub labels: Labels,
}

/// Longest namespace name, in characters.
pub const MAX_NAMESPACE_CHARS: usize = 76;

/// A namespace name that follows containerd's identifier rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceName(String);

impl NamespaceName {
    /// The namespace the seed API uses when a call names none.
    pub const DEFAULT: &'static str = "default";

    /// Checks `name`; `field` names where it came from in errors.
    pub fn parse(field: &str, name: &str) -> Result<NamespaceName, ValidationError> {
        validate_identifier(field, name)?;
        Ok(NamespaceName(name.to_owned()))
    }

    /// The `default` namespace.
    pub fn default_namespace() -> NamespaceName {
        NamespaceName(Self::DEFAULT.to_owned())
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks containerd's identifier rule, used for namespace names and lease
/// ids; `field` names the value in errors.
pub fn validate_identifier(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() || value.len() > MAX_NAMESPACE_CHARS {
        return Err(ValidationError::new(
            field,
            value,
            format!("must be 1 to {MAX_NAMESPACE_CHARS} characters"),
        ));
    }
    let ok = value
        .split(['.', '_', '-'])
        .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !ok {
        return Err(ValidationError::new(
            field,
            value,
            "must be letters and digits in components joined by one of . _ -",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_rule() {
        for ok in ["default", "k8s.io", "a", "A-b_c.d9", &"x".repeat(76)] {
            NamespaceName::parse("ns", ok).unwrap();
        }
        for bad in ["", "-a", "a-", "a..b", "a b", "ns/x", "é", &"x".repeat(77)] {
            let err = NamespaceName::parse("ns", bad).unwrap_err();
            assert_eq!(err.field, "ns");
        }
    }
}

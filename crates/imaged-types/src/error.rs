//! The one validation error: which field was refused, the refused value
//! (quoted and truncated) and why.

use std::fmt;

/// How many bytes of a refused value an error message repeats.
const SHOWN_VALUE_BYTES: usize = 96;

/// A refused input: the field's path as the wire names it (for example
/// `image.target.digest`), the value shown quoted and truncated, and the rule
/// it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Path of the refused field, e.g. `image.labels["k"]`.
    pub field: String,
    /// The refused value, quoted, escaped and truncated for display.
    pub value: String,
    /// The rule the value broke.
    pub reason: String,
}

impl ValidationError {
    /// Builds an error for `field`, quoting and truncating `value`.
    pub fn new(field: impl Into<String>, value: &str, reason: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            value: show_value(value),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {} {}: {}", self.field, self.value, self.reason)
    }
}

impl std::error::Error for ValidationError {}

/// Quotes `value` with Rust escaping (so control characters are visible) and
/// truncates it on a character boundary, saying how long it really was.
pub fn show_value(value: &str) -> String {
    if value.len() <= SHOWN_VALUE_BYTES {
        return format!("{value:?}");
    }
    let mut end = SHOWN_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_truncated_with_their_length() {
        let long = "é".repeat(100);
        let shown = show_value(&long);
        assert!(shown.ends_with("… (200 bytes)"), "{shown}");
        assert!(shown.len() < 120);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(show_value("a\nb"), "\"a\\nb\"");
    }
}

//! [`Digest`]: an OCI content digest that is valid by construction.
//!
//! The grammar is the OCI image spec's:
//! `algorithm ":" encoded`, where `algorithm` is `[a-z0-9]+` components joined
//! by one of `+._-`, and `encoded` is `[a-zA-Z0-9=_-]+`. The registered
//! algorithms are then checked strictly: `sha256` needs 64 lowercase hex
//! characters, `sha384` 96 and `sha512` 128. Other algorithms are refused.

use std::fmt;
use std::str::FromStr;

/// Why a string is not a digest. Shown, it quotes the string (truncated,
/// escaped); a caller that names the field and the value itself takes
/// [`DigestError::reason`] alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestError {
    /// The rule the string broke.
    pub reason: String,
    /// The string, as [`crate::error::show_value`] shows it.
    pub shown: String,
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a digest: {}", self.shown, self.reason)
    }
}

impl std::error::Error for DigestError {}

/// A content digest such as `sha256:…`. It can only hold a string that passed
/// [`Digest::parse`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

/// Hex lengths of the accepted algorithms.
const ALGORITHMS: &[(&str, usize)] = &[("sha256", 64), ("sha384", 96), ("sha512", 128)];

impl Digest {
    /// Parses and checks a digest string.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        check(s)?;
        Ok(Digest(s.to_owned()))
    }

    /// Checks a digest string without keeping it (for a reader that only
    /// passes the string on).
    pub fn validate(s: &str) -> Result<(), DigestError> {
        check(s)
    }

    /// Checks a digest string and keeps it, without copying it.
    pub fn from_string(s: String) -> Result<Digest, DigestError> {
        check(&s)?;
        Ok(Digest(s))
    }

    /// The whole digest, `algorithm:encoded`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The algorithm part, e.g. `sha256`.
    pub fn algorithm(&self) -> &str {
        self.0.split_once(':').map(|(a, _)| a).unwrap_or_default()
    }

    /// The encoded part (the hex string).
    pub fn encoded(&self) -> &str {
        self.0.split_once(':').map(|(_, e)| e).unwrap_or_default()
    }

    /// Consumes the digest, returning its string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// Checks a digest string: `algorithm:encoded`, with a known algorithm and
/// its length of lowercase hex.
///
/// Every stored record's digest is checked again when it is read, so the
/// common case, a well-formed sha256 digest, is accepted in one pass; all
/// else takes the full check, which also says what is wrong.
fn check(s: &str) -> Result<(), DigestError> {
    if s.strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    {
        return Ok(());
    }
    check_fully(s)
}

/// [`check`] without its shortcut.
fn check_fully(s: &str) -> Result<(), DigestError> {
    let fail = |reason: String| {
        Err(DigestError {
            reason,
            shown: crate::error::show_value(s),
        })
    };
    if s.is_empty() {
        return fail("must not be empty; expected algorithm:encoded, e.g. sha256:<64 hex>".into());
    }
    let Some((algorithm, encoded)) = s.split_once(':') else {
        return fail("must be algorithm:encoded, e.g. sha256:<64 hex>".into());
    };
    let component_ok = |c: &str| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !algorithm.split(['+', '.', '_', '-']).all(component_ok) {
        return fail(format!("malformed algorithm {algorithm:?}"));
    }
    if encoded.is_empty()
        || !encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-')
    {
        return fail("malformed encoded part (allowed: [a-zA-Z0-9=_-]+)".into());
    }
    let Some(&(_, hex_len)) = ALGORITHMS.iter().find(|(name, _)| *name == algorithm) else {
        return fail(format!(
            "unsupported algorithm {algorithm:?} (accepted: sha256, sha384, sha512)"
        ));
    };
    if encoded.len() != hex_len || !encoded.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return fail(format!("{algorithm} needs {hex_len} lowercase hex characters"));
    }
    Ok(())
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(n: usize) -> String {
        "0123456789abcdef".chars().cycle().take(n).collect()
    }

    #[test]
    fn accepts_registered_algorithms() {
        for (alg, n) in [("sha256", 64), ("sha384", 96), ("sha512", 128)] {
            let d = Digest::parse(&format!("{alg}:{}", hex(n))).unwrap();
            assert_eq!(d.algorithm(), alg);
            assert_eq!(d.encoded().len(), n);
        }
    }

    #[test]
    fn the_shortcut_decides_as_the_full_check_does() {
        // Every one-byte change of a good digest of each algorithm, and a
        // few lengths around it: the shortcut may only accept what the full
        // check accepts, and the answer must not depend on which ran.
        let mut inputs = Vec::new();
        for (alg, n) in [("sha256", 64), ("sha384", 96), ("sha512", 128)] {
            let good = format!("{alg}:{}", hex(n));
            for at in 0..good.len() {
                for b in [b'0', b'a', b'f', b'g', b'A', b':', b'-', b'_', b'=', b'+', b' ', 0xff] {
                    let mut bytes = good.clone().into_bytes();
                    bytes[at] = b;
                    if let Ok(changed) = String::from_utf8(bytes) {
                        inputs.push(changed);
                    }
                }
            }
            for len in [n - 1, n + 1, 2 * n] {
                inputs.push(format!("{alg}:{}", hex(len)));
            }
            inputs.push(good);
        }
        let mut accepted = 0;
        for input in &inputs {
            let (quick, full) = (check(input), check_fully(input));
            assert_eq!(quick.is_ok(), full.is_ok(), "{input:?}");
            if let (Err(quick), Err(full)) = (quick, full) {
                assert_eq!(quick.reason, full.reason, "{input:?}");
            }
            accepted += usize::from(check_fully(input).is_ok());
        }
        // Far more than the three good digests pass (any hex digit changed
        // for another), so the comparison covers acceptance as well.
        assert!(accepted > 100, "{accepted}");
    }

    #[test]
    fn refuses_bad_digests() {
        let cases = [
            ("", "must not be empty"),
            ("sha256", "algorithm:encoded"),
            (&format!("SHA256:{}", hex(64)), "malformed algorithm"),
            (&format!("sha256+:{}", hex(64)), "malformed algorithm"),
            ("sha256:", "malformed encoded"),
            ("sha256:ab/c", "malformed encoded"),
            (&format!("sha256:{}", hex(63)), "64 lowercase hex"),
            (&format!("sha256:{}", hex(64).to_uppercase()), "64 lowercase hex"),
            (&format!("sha512:{}", hex(64)), "128 lowercase hex"),
            (&format!("md5:{}", hex(32)), "unsupported algorithm"),
            (&format!("multihash+base58:{}", hex(40)), "unsupported algorithm"),
        ];
        for (input, want) in cases {
            let err = Digest::parse(input).unwrap_err();
            assert!(err.reason.contains(want), "{input:?}: {err}");
            // Shown, the error quotes what it refused.
            assert!(
                err.to_string().starts_with(&format!("{input:?} is not a digest: ")),
                "{err}"
            );
        }
    }
}

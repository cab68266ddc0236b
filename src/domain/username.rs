//! Usernames: 3..32 characters of `[a-z0-9_.-]` after lower-casing.

use std::fmt;

use serde::Serialize;

/// A validated, lower-case username.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Username(String);

/// Why a username was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsernameError {
    /// Outside 3..32 characters.
    #[error("username must be 3 to 32 characters")]
    Length,
    /// A character outside `[a-z0-9_.-]`.
    #[error("username may only contain a-z, 0-9, '_', '.' and '-'")]
    Charset,
}

impl Username {
    /// Shortest allowed name.
    pub const MIN_LEN: usize = 3;
    /// Longest allowed name.
    pub const MAX_LEN: usize = 32;

    /// Lower-cases and validates.
    pub fn parse(raw: &str) -> Result<Self, UsernameError> {
        let lower = raw.to_ascii_lowercase();
        // Length is checked on the bytes of an all-ASCII string, so it equals the char count.
        if !lower.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        }) {
            return Err(UsernameError::Charset);
        }
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&lower.len()) {
            return Err(UsernameError::Length);
        }
        Ok(Self(lower))
    }

    /// Wraps a name read back from the database, where only validated names are written.
    pub fn from_trusted(stored: String) -> Self {
        Self(stored)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_case_is_folded() {
        assert_eq!(
            Username::parse("Alice").map(|u| u.0),
            Ok("alice".to_string())
        );
    }

    #[test]
    fn rules_are_enforced() {
        assert_eq!(Username::parse("ab"), Err(UsernameError::Length));
        assert_eq!(Username::parse(&"a".repeat(33)), Err(UsernameError::Length));
        assert_eq!(Username::parse("bad name"), Err(UsernameError::Charset));
        assert_eq!(Username::parse("ünï"), Err(UsernameError::Charset));
        assert!(Username::parse("a.b-c_9").is_ok());
    }
}

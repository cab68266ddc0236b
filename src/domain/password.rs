//! Password rules: 8..128 Unicode scalar values, never truncated, not on the shipped list of
//! common passwords (`src/domain/common-passwords.txt`). No composition rules.

use std::collections::HashSet;
use std::sync::LazyLock;

/// The shipped list of the most common passwords, one per line.
const COMMON_PASSWORDS: &str = include_str!("common-passwords.txt");

static COMMON: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    COMMON_PASSWORDS
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
});

/// A password that passed the rules. Its `Debug` never shows the value.
pub struct Password(String);

/// Why a password was refused (all map to `weak_password`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PasswordError {
    /// Fewer than 8 characters.
    #[error("password must be at least 8 characters")]
    TooShort,
    /// More than 128 characters.
    #[error("password must be at most 128 characters")]
    TooLong,
    /// On the list of common passwords.
    #[error("password is too common")]
    Common,
}

impl Password {
    /// Shortest allowed, in Unicode scalar values.
    pub const MIN_CHARS: usize = 8;
    /// Longest allowed, in Unicode scalar values.
    pub const MAX_CHARS: usize = 128;

    /// Checks the rules.
    pub fn parse(raw: String) -> Result<Self, PasswordError> {
        let n = raw.chars().count();
        if n < Self::MIN_CHARS {
            return Err(PasswordError::TooShort);
        }
        if n > Self::MAX_CHARS {
            return Err(PasswordError::TooLong);
        }
        if COMMON.contains(raw.to_lowercase().as_str()) {
            return Err(PasswordError::Common);
        }
        Ok(Self(raw))
    }

    /// The password, for hashing only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Size of the shipped common-password list.
    pub fn common_list_len() -> usize {
        COMMON.len()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_large_enough() {
        assert!(
            Password::common_list_len() >= 1000,
            "{}",
            Password::common_list_len()
        );
    }

    #[test]
    fn rules() {
        assert_eq!(
            Password::parse("short".into()).err(),
            Some(PasswordError::TooShort)
        );
        assert_eq!(
            Password::parse("x".repeat(129)).err(),
            Some(PasswordError::TooLong)
        );
        assert_eq!(
            Password::parse("password123".into()).err(),
            Some(PasswordError::Common)
        );
        // Counted in scalar values, not bytes: 8 two-byte characters are enough.
        assert!(Password::parse("éééééééé".into()).is_ok());
        assert!(Password::parse("x".repeat(128)).is_ok());
    }
}

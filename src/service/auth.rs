//! The password of `--requirepass` / `--password-file` and what a connection may do before it
//! has given it (Redis's rules: only `AUTH`, `HELLO ... AUTH`, and here `PING` and `QUIT`).
//!
//! Secrets are compared in constant time, never logged (the type's `Debug` hides them), and
//! a connection that fails [`MAX_FAILURES`] times is closed: a guesser has to reconnect, and
//! every failure is logged with its count.

use std::fmt;

use subtle::ConstantTimeEq;

/// Wrong passwords one connection may try before it is closed.
pub const MAX_FAILURES: u32 = 10;

/// The one user seqd knows (Redis's default user).
pub const DEFAULT_USER: &[u8] = b"default";

/// The server's password. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Box<[u8]>);

impl Password {
    /// `None` for an empty password (Redis treats `requirepass ""` as no password).
    pub fn new(secret: impl Into<Vec<u8>>) -> Option<Password> {
        let secret: Vec<u8> = secret.into();
        (!secret.is_empty()).then(|| Password(secret.into_boxed_slice()))
    }

    /// Whether `user` (`None`: `AUTH password`, meaning the default user) and `given` are the
    /// credentials. The comparison of the password takes the same time wherever it differs.
    pub fn accepts(&self, user: Option<&[u8]>, given: &[u8]) -> bool {
        let password_matches: bool = self.0.as_ref().ct_eq(given).into();
        let user_matches = user.is_none_or(|user| user == DEFAULT_USER);
        password_matches & user_matches
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// One connection's authentication.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AuthState {
    /// Set by a good password, or at the first request when no password is set.
    pub authenticated: bool,
    /// Wrong passwords given on this connection.
    pub failures: u32,
}

impl AuthState {
    /// Counts and logs a wrong password; `true` when the connection must now be closed.
    pub fn failed(&mut self) -> bool {
        self.failures += 1;
        super::counters::AUTH_FAILURES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let closing = self.failures >= MAX_FAILURES;
        // The secret tried is never logged; the count says whether someone is guessing.
        tracing::warn!(
            failures = self.failures,
            closing,
            "authentication failed: wrong password"
        );
        closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_password_for_the_default_user_only() {
        let password = Password::new("s3cret").unwrap();
        assert!(password.accepts(None, b"s3cret"));
        assert!(password.accepts(Some(b"default"), b"s3cret"));
        assert!(!password.accepts(Some(b"bob"), b"s3cret"));
        assert!(!password.accepts(None, b"s3cre"));
        assert!(!password.accepts(None, b"s3cret!"));
        assert!(!password.accepts(None, b""));
        assert_eq!(Password::new(""), None);
        assert_eq!(format!("{password:?}"), "Password(<redacted>)");
    }

    #[test]
    fn the_tenth_failure_closes() {
        let mut state = AuthState::default();
        for _ in 1..MAX_FAILURES {
            assert!(!state.failed());
        }
        assert!(state.failed());
    }
}

//! The auth operator (SPEC §6): verifies Keycloak JWTs and decides what a principal may do.
//!
//! - [`Verifier`]: RS256 (or ES256) tokens checked against the issuer's JWKS, which is
//!   fetched from `{issuer}/protocol/openid-connect/certs`, cached, and refreshed when a token
//!   names an unknown `kid` (at most once per 10 s). `none`, HMAC and algorithm-confusion
//!   tokens are refused before any key is used. A verified token is cached until it expires,
//!   so a record costs a map lookup, not an RSA verification.
//! - [`permissions::allowed`]: the permission matrix, one function.
//! - [`dev`]: zero-setup mode: a local signing key kept in the data dir, its JWKS, and tokens
//!   for the demo users, checked by the very same [`Verifier`].

pub mod audit;
mod claims;
pub mod dev;
pub mod dev_issuer;
mod jwks;
pub mod permissions;
pub mod verifier;

pub use jwks::{JwksSource, KeyStore};
pub use verifier::{Verified, Verifier, VerifierSettings};

use std::fmt;

use gaveurs_schemas::RejectReason;

/// Why a token was refused. [`AuthError::reason`] is the stable code written to the audit
/// log and the dead-letter row; the message says more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    pub code: AuthErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthErrorCode {
    MissingToken,
    Malformed,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
    /// The JWKS could not be fetched; the token could not be checked.
    KeysUnavailable,
    Forbidden,
}

impl AuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthErrorCode::MissingToken => "missing_token",
            AuthErrorCode::Malformed => "malformed_token",
            AuthErrorCode::AlgorithmNotAllowed => "algorithm_not_allowed",
            AuthErrorCode::UnknownKey => "unknown_key",
            AuthErrorCode::BadSignature => "bad_signature",
            AuthErrorCode::Expired => "expired",
            AuthErrorCode::NotYetValid => "not_yet_valid",
            AuthErrorCode::IssuedInFuture => "issued_in_future",
            AuthErrorCode::WrongIssuer => "wrong_issuer",
            AuthErrorCode::WrongAudience => "wrong_audience",
            AuthErrorCode::KeysUnavailable => "keys_unavailable",
            AuthErrorCode::Forbidden => "forbidden",
        }
    }

    /// The dead-letter reason: missing, expired, forbidden, or otherwise invalid.
    pub fn reject_reason(self) -> RejectReason {
        match self {
            AuthErrorCode::MissingToken => RejectReason::MissingToken,
            AuthErrorCode::Expired => RejectReason::ExpiredToken,
            AuthErrorCode::Forbidden => RejectReason::Forbidden,
            _ => RejectReason::InvalidToken,
        }
    }
}

impl AuthError {
    pub fn new(code: AuthErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn missing() -> Self {
        Self::new(
            AuthErrorCode::MissingToken,
            "no token: send `Authorization: Bearer <jwt>`",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(AuthErrorCode::Forbidden, message)
    }
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for AuthError {}

/// Strips an optional `Bearer ` prefix (any case) from a header or property value.
pub fn bearer(value: &str) -> &str {
    let value = value.trim();
    match value.get(..7) {
        Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => value[7..].trim(),
        _ => value,
    }
}

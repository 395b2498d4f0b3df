//! Webhook signatures: HMAC-SHA256 over the raw body bytes, from
//! `X-Hub-Signature-256`, compared in constant time. Up to two secrets are
//! live at once so the secret can be rotated without dropping deliveries.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use core_types::Secret;

/// The header GitHub signs with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The live webhook secrets: the current one and, during a rotation, the previous.
#[derive(Clone)]
pub struct WebhookSecrets {
    secrets: Vec<Secret>,
}

impl std::fmt::Debug for WebhookSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecrets(<{} redacted>)", self.secrets.len())
    }
}

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Hub-Signature-256` (the legacy SHA-1 header alone is not enough).
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    /// Not `sha256=` followed by 64 hex digits.
    #[error("malformed X-Hub-Signature-256 header (expected sha256=<64 hex digits>)")]
    Malformed,
    /// Well-formed, but no live secret produces it.
    #[error("signature does not match")]
    Mismatch,
}

/// A well-formed `X-Hub-Signature-256`: the digest it claims, not yet
/// checked. Parsed before the body is read, so a request without one is
/// refused without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimedSignature([u8; 32]);

impl ClaimedSignature {
    /// The digest of a `sha256=<64 hex digits>` header.
    ///
    /// # Errors
    /// Missing or malformed.
    pub fn parse(header: Option<&[u8]>) -> Result<Self, SignatureError> {
        let header = header.ok_or(SignatureError::Missing)?;
        let digest = header.strip_prefix(b"sha256=").ok_or(SignatureError::Malformed)?;
        if digest.len() != 64 {
            return Err(SignatureError::Malformed);
        }
        let mut expected = [0_u8; 32];
        hex::decode_to_slice(digest, &mut expected).map_err(|_| SignatureError::Malformed)?;
        Ok(Self(expected))
    }
}

impl WebhookSecrets {
    /// The current secret and, optionally, the previous one.
    pub fn new(current: Secret, previous: Option<Secret>) -> Self {
        Self { secrets: std::iter::once(current).chain(previous).collect() }
    }

    /// Checks `header` against `body` with every live secret.
    ///
    /// # Errors
    /// Missing, malformed, or matching no secret.
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureError> {
        self.verify_parts(&ClaimedSignature::parse(header)?, &[body])
    }

    /// Checks a claimed signature against a body given in the pieces it
    /// arrived in, with every live secret.
    ///
    /// # Errors
    /// [`SignatureError::Mismatch`] when no secret produces it.
    pub fn verify_parts(
        &self,
        claimed: &ClaimedSignature,
        parts: &[impl AsRef<[u8]>],
    ) -> Result<(), SignatureError> {
        // Check every secret, so the time taken does not say which one matched.
        let mut matched = false;
        for secret in &self.secrets {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
                .expect("HMAC accepts keys of any length");
            for part in parts {
                mac.update(part.as_ref());
            }
            matched |= mac.verify_slice(&claimed.0).is_ok();
        }
        if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
    }
}

/// `sha256=<hex>` for `body` under `secret`: what GitHub would send.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

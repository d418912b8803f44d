//! The webhook signing key: Ed25519 signatures of webhook requests (PROTOCOL.md section 7.1),
//! the JWK Set that publishes the public key (section 6.5), and the signed callback and claim
//! tokens (section 12.9).
//!
//! `kid` is `ds_` followed by the RFC 7638 JWK thumbprint of the public key: the unpadded
//! base64url SHA-256 of `{"crv":"Ed25519","kty":"OKP","x":"<x>"}` (members in lexicographic
//! order, no whitespace), so it is stable for the key's lifetime and derived from it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Domain separation: a token signature can never be replayed as a webhook signature (whose
/// message starts with decimal digits), nor the other way round.
const TOKEN_CONTEXT: &[u8] = b"ds-subscription-token.v1.";

/// The server's webhook signing key.
pub struct KeyRing {
    signing: SigningKey,
    kid: String,
    x: String,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// A signing key as persisted in the internal key stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredKey {
    pub(crate) kid: String,
    pub(crate) alg: String,
    /// The 32-byte secret, unpadded base64url.
    pub(crate) d: String,
    pub(crate) created_at_ms: u64,
}

impl KeyRing {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<KeyRing> {
        let mut secret = [0_u8; 32];
        getrandom::fill(&mut secret).map_err(|e| Error::Random(e.to_string()))?;
        Ok(KeyRing::from_secret(&secret))
    }

    /// The key with this 32-byte secret.
    #[must_use]
    pub fn from_secret(secret: &[u8; 32]) -> KeyRing {
        let signing = SigningKey::from_bytes(secret);
        let x = B64.encode(signing.verifying_key().to_bytes());
        let kid = format!("ds_{}", thumbprint(&x));
        KeyRing { signing, kid, x }
    }

    pub(crate) fn to_stored(&self, now_ms: u64) -> StoredKey {
        StoredKey {
            kid: self.kid.clone(),
            alg: "EdDSA".to_owned(),
            d: B64.encode(self.signing.to_bytes()),
            created_at_ms: now_ms,
        }
    }

    pub(crate) fn from_stored(stored: &StoredKey) -> std::result::Result<KeyRing, String> {
        let bytes = B64
            .decode(&stored.d)
            .map_err(|e| format!("key is not base64url: {e}"))?;
        let secret: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| "key is not 32 bytes".to_owned())?;
        let ring = KeyRing::from_secret(&secret);
        if ring.kid != stored.kid {
            return Err(format!(
                "stored kid {} does not match the key's thumbprint {}",
                stored.kid, ring.kid
            ));
        }
        Ok(ring)
    }

    /// The key id (`ds_` + RFC 7638 thumbprint).
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key.
    #[must_use]
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The JWK Set served at `{base}/__ds/jwks.json`.
    #[must_use]
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({
            "keys": [{
                "kty": "OKP",
                "crv": "Ed25519",
                "kid": self.kid,
                "use": "sig",
                "alg": "EdDSA",
                "x": self.x,
            }]
        })
    }

    /// The `Webhook-Signature` header value for `body` sent at Unix time `t`:
    /// `t=<t>,kid=<kid>,ed25519=<unpadded base64url signature of "<t>.<body>">`.
    #[must_use]
    pub fn webhook_signature(&self, t: u64, body: &[u8]) -> String {
        let mut msg = Vec::with_capacity(body.len() + 21);
        msg.extend_from_slice(t.to_string().as_bytes());
        msg.push(b'.');
        msg.extend_from_slice(body);
        let sig = self.signing.sign(&msg);
        format!(
            "t={t},kid={},ed25519={}",
            self.kid,
            B64.encode(sig.to_bytes())
        )
    }

    /// Signs `claims` into a bearer token: `<payload>.<signature>`, both unpadded base64url.
    ///
    /// # Panics
    ///
    /// Never: claims are strings and integers, which always serialise to JSON.
    #[must_use]
    pub fn mint(&self, claims: &TokenClaims) -> String {
        let payload =
            B64.encode(serde_json::to_vec(claims).expect("token claims always serialise to JSON"));
        let sig = self.signing.sign(&token_message(&payload));
        format!("{payload}.{}", B64.encode(sig.to_bytes()))
    }

    /// Verifies a token's signature and decodes its claims. Expiry and scope are the caller's
    /// decision.
    #[must_use]
    pub fn verify(&self, token: &str) -> Option<TokenClaims> {
        let (payload, sig) = token.split_once('.')?;
        let sig = B64.decode(sig).ok()?;
        let sig = Signature::from_slice(&sig).ok()?;
        self.signing
            .verifying_key()
            .verify(&token_message(payload), &sig)
            .ok()?;
        serde_json::from_slice(&B64.decode(payload).ok()?).ok()
    }
}

fn token_message(payload: &str) -> Vec<u8> {
    let mut msg = TOKEN_CONTEXT.to_vec();
    msg.extend_from_slice(payload.as_bytes());
    msg
}

/// RFC 7638 thumbprint of an Ed25519 OKP key with public value `x`.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// What a callback or claim token grants: acting on one wake of one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The subscription id.
    pub sub: String,
    /// The subscription's incarnation (changes when an id is deleted and created again).
    pub inc: u64,
    /// The wake generation.
    #[serde(rename = "gen")]
    pub gen_: u64,
    /// The wake id.
    pub wake: String,
    /// Expiry, Unix seconds.
    pub exp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 8037 appendix A.2/A.3: the Ed25519 example key and its thumbprint.
        let d = B64
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("b64");
        let ring = KeyRing::from_secret(&d.try_into().expect("32 bytes"));
        assert_eq!(ring.x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(ring.kid(), "ds_kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
        let jwks = ring.jwks();
        assert_eq!(jwks["keys"][0]["kid"], ring.kid());
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    }

    #[test]
    fn webhook_signature_has_the_spec_format_and_verifies() {
        let ring = KeyRing::generate().expect("rng");
        let body = br#"{"subscription_id":"s"}"#;
        let header = ring.webhook_signature(1_778_324_210, body);
        let rest = header.strip_prefix("t=1778324210,kid=").expect("t first");
        let (kid, sig) = rest.split_once(",ed25519=").expect("ed25519 last");
        assert_eq!(kid, ring.kid());
        assert!(
            sig.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let sig = Signature::from_slice(&B64.decode(sig).expect("b64")).expect("64 bytes");
        let msg = [b"1778324210.".as_slice(), body].concat();
        ring.verifying_key()
            .verify_strict(&msg, &sig)
            .expect("verifies");
        // Any change to the timestamp or body breaks it.
        assert!(
            ring.verifying_key()
                .verify_strict(b"1778324211.{}", &sig)
                .is_err()
        );
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering_and_other_keys() {
        let ring = KeyRing::generate().expect("rng");
        let claims = TokenClaims {
            sub: "sub-1".into(),
            inc: 7,
            gen_: 3,
            wake: "w_1".into(),
            exp: 99,
        };
        let token = ring.mint(&claims);
        assert_eq!(ring.verify(&token), Some(claims.clone()));
        let other = KeyRing::generate().expect("rng");
        assert_eq!(other.verify(&token), None);
        let (payload, sig) = token.split_once('.').expect("two parts");
        let forged = TokenClaims { gen_: 4, ..claims };
        let forged_payload = B64.encode(serde_json::to_vec(&forged).expect("json"));
        assert_eq!(ring.verify(&format!("{forged_payload}.{sig}")), None);
        assert_eq!(ring.verify(payload), None);
        assert_eq!(ring.verify("garbage"), None);
        // A token signature is not a webhook signature over the same bytes.
        let webhook = ring.webhook_signature(1, payload.as_bytes());
        assert!(!webhook.ends_with(sig));
    }

    #[test]
    fn stored_keys_reload_with_the_same_kid() {
        let ring = KeyRing::generate().expect("rng");
        let stored = ring.to_stored(1);
        let back = KeyRing::from_stored(&stored).expect("valid");
        assert_eq!(back.kid(), ring.kid());
        let bad = StoredKey {
            kid: "ds_wrong".into(),
            ..stored
        };
        assert!(KeyRing::from_stored(&bad).is_err());
    }
}

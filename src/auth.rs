//! Client API keys: `Authorization: Bearer <key>` checked against
//! `auth.api_keys` (here) and against the database's keys
//! ([`crate::keys`]). Keys are held only as SHA-256 digests and compared in
//! constant time; a configured entry may itself be `sha256:<hex>`. The admin
//! key (`auth.admin_key`) guards `/admin/v1/...` the same way.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Secret;
use crate::error::ApiError;
use crate::store::keys::KeyRecord;

/// Who is calling: the SHA-256 of their key. Used to scope the cache and the
/// rate limits per key; never logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(pub [u8; 32]);

impl ClientId {
    /// How the ledger and fal's invoice tags name a key from
    /// `auth.api_keys`: `cfg-` and the first 48 bits of its SHA-256 (which
    /// tell nothing about the key itself).
    pub fn config_account(&self) -> String {
        format!("cfg-{}", hex::encode(&self.0[..6]))
    }
}

/// The database key a request presented (a request extension, beside its
/// [`ClientId`]).
#[derive(Clone, Debug)]
pub struct DbKey(pub Arc<KeyRecord>);

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(authorization: Option<&[u8]>) -> Result<&[u8], ApiError> {
    let Some(value) = authorization else {
        return Err(ApiError::Unauthorized {
            message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        });
    };
    value
        .strip_prefix(b"Bearer ")
        .or_else(|| value.strip_prefix(b"bearer "))
        .map(|k| k.trim_ascii())
        .filter(|k| !k.is_empty())
        .ok_or(ApiError::Unauthorized {
            message: "The Authorization header must be `Bearer YOUR_KEY`.",
        })
}

/// The admin API's key (`auth.admin_key`), held as a digest.
pub struct AdminKey {
    digest: Option<[u8; 32]>,
}

impl AdminKey {
    pub fn new(key: Option<&Secret>) -> Self {
        Self {
            digest: key.map(|k| digest(k.expose().trim())),
        }
    }

    /// Without an admin key the admin API is off (its paths are 404).
    pub fn is_enabled(&self) -> bool {
        self.digest.is_some()
    }

    /// Check an `Authorization` header value against the admin key, in
    /// constant time.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<(), ApiError> {
        let token = bearer(authorization)?;
        let presented: [u8; 32] = Sha256::digest(token).into();
        match &self.digest {
            Some(d) if bool::from(d.ct_eq(&presented)) => Ok(()),
            _ => Err(ApiError::Unauthorized {
                message: "Incorrect admin key provided.",
            }),
        }
    }
}

/// What a client hears for a key nobody knows.
pub const INCORRECT_KEY: &str = "Incorrect API key provided.";

pub struct Auth {
    digests: Vec<[u8; 32]>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl Auth {
    /// From validated settings (a `sha256:` entry has 64 hex digits).
    pub fn new(keys: &[Secret]) -> Self {
        let digests = keys
            .iter()
            .map(|k| match k.expose().strip_prefix("sha256:") {
                Some(hex_digest) => {
                    let mut out = [0u8; 32];
                    if hex::decode_to_slice(hex_digest, &mut out).is_err() {
                        // Unreachable after validation; an unmatchable digest is safe.
                        out = digest(k.expose());
                    }
                    out
                }
                None => digest(k.expose()),
            })
            .collect();
        Self { digests }
    }

    /// No keys configured: anyone may call.
    pub fn is_open(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `presented` (a key's SHA-256) is a configured key. Compares
    /// against every key without stopping early.
    pub fn is_configured(&self, presented: &[u8; 32]) -> bool {
        let mut found = subtle::Choice::from(0u8);
        for d in &self.digests {
            found |= d.ct_eq(presented);
        }
        bool::from(found)
    }

    /// Check an `Authorization` header value against the configured keys.
    pub fn check(&self, authorization: Option<&[u8]>) -> Result<ClientId, ApiError> {
        let presented: [u8; 32] = Sha256::digest(bearer(authorization)?).into();
        if self.is_configured(&presented) {
            Ok(ClientId(presented))
        } else {
            Err(ApiError::Unauthorized {
                message: INCORRECT_KEY,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_key_is_checked_like_a_bearer_key_and_off_when_unset() {
        let admin = AdminKey::new(Some(&Secret::new("admin-0123456789abcdef")));
        assert!(admin.is_enabled());
        assert!(admin.check(Some(b"Bearer admin-0123456789abcdef")).is_ok());
        for bad in [&b"Bearer admin-0123456789abcdeF"[..], b"Bearer ", b"admin"] {
            assert!(admin.check(Some(bad)).is_err());
        }
        assert!(admin.check(None).is_err());
        let off = AdminKey::new(None);
        assert!(!off.is_enabled());
        assert!(off.check(Some(b"Bearer anything")).is_err());
    }

    #[test]
    fn plain_and_hashed_keys_are_accepted_and_others_refused() {
        let hashed = format!("sha256:{}", hex::encode(digest("sk-hashed")));
        let auth = Auth::new(&[Secret::new("sk-plain"), Secret::new(hashed)]);
        assert!(auth.check(Some(b"Bearer sk-plain")).is_ok());
        assert!(auth.check(Some(b"Bearer sk-hashed")).is_ok());
        assert!(auth.check(Some(b"bearer sk-plain")).is_ok());
        assert_eq!(
            auth.check(Some(b"Bearer sk-plain")).unwrap(),
            auth.check(Some(b"Bearer  sk-plain ")).unwrap()
        );
        for bad in [
            &b"Bearer sk-other"[..],
            b"Bearer ",
            b"Basic sk-plain",
            b"sk-plain",
            b"",
        ] {
            assert!(matches!(
                auth.check(Some(bad)),
                Err(ApiError::Unauthorized { .. })
            ));
        }
        assert!(auth.check(None).is_err());
        assert_eq!(
            ClientId(digest("sk-plain")).config_account(),
            format!("cfg-{}", &hex::encode(digest("sk-plain"))[..12])
        );
        // The hash itself is not a key.
        let raw_hash = format!("Bearer {}", hex::encode(digest("sk-hashed")));
        assert!(auth.check(Some(raw_hash.as_bytes())).is_err());
    }
}

//! Ed25519 signing keys: generation, rotation ("publish before sign") and retirement.
//!
//! A new key is published (listed by ListSigningKeys) `publish_lead` before it starts
//! signing, so verifiers that refresh their cache in that time never see an unknown
//! `kid`. A key stays published until every token it signed has expired.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration, Utc};
use ed25519_dalek::SigningKey as DalekKey;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use parking_lot::RwLock;
use rand::RngCore as _;

/// One signing key as stored.
#[derive(Clone)]
pub struct KeyRecord {
    /// Key id (`kid`).
    pub kid: String,
    /// The private key, PKCS#8 DER (what jsonwebtoken's encoding side takes).
    pub private_pkcs8: Vec<u8>,
    /// The raw 32-byte public key.
    pub public_key: Vec<u8>,
    /// When it was made.
    pub create_time: DateTime<Utc>,
    /// When it starts (or started) signing.
    pub activate_time: DateTime<Utc>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("activate_time", &self.activate_time)
            .finish_non_exhaustive()
    }
}

impl KeyRecord {
    /// Generates a key from 256 random bits that activates at `activate_time`.
    ///
    /// # Errors
    /// When PKCS#8 encoding fails.
    pub fn generate(now: DateTime<Utc>, activate_time: DateTime<Utc>) -> anyhow::Result<Self> {
        let mut secret = [0_u8; 32];
        rand::rng().fill_bytes(&mut secret);
        let key = DalekKey::from_bytes(&secret);
        let private_pkcs8 = key
            .to_pkcs8_der()
            .map_err(|err| anyhow::anyhow!("cannot encode signing key: {err}"))?
            .as_bytes()
            .to_vec();
        Ok(Self {
            kid: uuid::Uuid::now_v7().simple().to_string(),
            private_pkcs8,
            public_key: key.verifying_key().to_bytes().to_vec(),
            create_time: now,
            activate_time,
        })
    }

    /// The public key as RFC 8037's `x`: base64url without padding.
    pub fn public_x(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public_key)
    }
}

/// Rotation settings.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// A key signs for this long before its successor takes over.
    pub rotation_interval: Duration,
    /// A successor is published this long before it signs.
    pub publish_lead: Duration,
    /// A superseded key stays published this long (≥ the longest token lifetime plus
    /// verifiers' leeway).
    pub retain_after_superseded: Duration,
}

/// What one maintenance pass decided.
#[derive(Debug, Default)]
pub struct KeyPlan {
    /// Keys to create.
    pub create: Vec<KeyRecord>,
    /// Key ids to delete.
    pub retire: Vec<String>,
}

impl RotationPolicy {
    /// Decides which keys to create and retire, given all stored keys.
    ///
    /// # Errors
    /// When a key cannot be generated.
    pub fn plan(&self, keys: &[KeyRecord], now: DateTime<Utc>) -> anyhow::Result<KeyPlan> {
        let mut plan = KeyPlan::default();
        let Some(newest) = keys.iter().max_by_key(|k| k.activate_time) else {
            // First start: nobody can have cached anything, so sign at once.
            plan.create.push(KeyRecord::generate(now, now)?);
            return Ok(plan);
        };
        if newest.activate_time <= now
            && newest.activate_time + self.rotation_interval - self.publish_lead <= now
        {
            plan.create
                .push(KeyRecord::generate(now, now + self.publish_lead)?);
        }
        // A key is superseded when a newer key is active; once that was long enough ago,
        // no unexpired token can carry it.
        let mut active: Vec<&KeyRecord> = keys.iter().filter(|k| k.activate_time <= now).collect();
        active.sort_by_key(|k| k.activate_time);
        for pair in active.windows(2) {
            let (old, successor) = (pair[0], pair[1]);
            if successor.activate_time + self.retain_after_superseded <= now {
                plan.retire.push(old.kid.clone());
            }
        }
        Ok(plan)
    }
}

/// The keys in memory: what signs now and what is published.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: Arc<RwLock<Vec<KeyRecord>>>,
}

impl KeyRing {
    /// Replaces the keys (after loading them from storage).
    pub fn replace(&self, keys: Vec<KeyRecord>) {
        *self.keys.write() = keys;
    }

    /// The key that signs at `now`: the newest already active.
    pub fn signing_key(&self, now: DateTime<Utc>) -> Option<KeyRecord> {
        self.keys
            .read()
            .iter()
            .filter(|k| k.activate_time <= now)
            .max_by_key(|k| k.activate_time)
            .cloned()
    }

    /// Every published key, oldest first.
    pub fn published(&self) -> Vec<KeyRecord> {
        let mut keys = self.keys.read().clone();
        keys.sort_by_key(|k| k.activate_time);
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RotationPolicy {
        RotationPolicy {
            rotation_interval: Duration::days(30),
            publish_lead: Duration::minutes(10),
            retain_after_superseded: Duration::minutes(20),
        }
    }

    #[test]
    fn first_key_signs_at_once() -> anyhow::Result<()> {
        let now = Utc::now();
        let plan = policy().plan(&[], now)?;
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.create[0].activate_time, now);
        assert_eq!(plan.create[0].public_key.len(), 32);
        Ok(())
    }

    #[test]
    fn successor_is_published_before_it_signs_and_old_key_retires_later() -> anyhow::Result<()> {
        let start = Utc::now();
        let first = KeyRecord::generate(start, start)?;
        // Not due yet.
        let plan = policy().plan(std::slice::from_ref(&first), start + Duration::days(1))?;
        assert!(plan.create.is_empty());
        // Due: the successor activates publish_lead later, and the ring keeps signing
        // with the old key until then.
        let now = start + Duration::days(30) - Duration::minutes(10);
        let plan = policy().plan(std::slice::from_ref(&first), now)?;
        let successor = plan
            .create
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no successor"))?;
        assert_eq!(successor.activate_time, now + Duration::minutes(10));
        let ring = KeyRing::default();
        ring.replace(vec![first.clone(), successor.clone()]);
        assert_eq!(
            ring.signing_key(now).map(|k| k.kid),
            Some(first.kid.clone())
        );
        assert_eq!(ring.published().len(), 2);
        let after = successor.activate_time;
        assert_eq!(
            ring.signing_key(after).map(|k| k.kid),
            Some(successor.kid.clone())
        );
        // Retired only once the successor has signed for retain_after_superseded.
        let keys = [first.clone(), successor.clone()];
        assert!(
            policy()
                .plan(&keys, after + Duration::minutes(19))?
                .retire
                .is_empty()
        );
        assert_eq!(
            policy().plan(&keys, after + Duration::minutes(20))?.retire,
            [first.kid]
        );
        Ok(())
    }
}

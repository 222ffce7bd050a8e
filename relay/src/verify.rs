//! Batch verification of submitted envelopes with a per-connection cache of decoded author
//! keys.
//!
//! Same checks as `Event::decode_batch` (decode, recompute the id, reject weak keys, one batch
//! ed25519 verification, strict one-by-one verification to find the culprits when the batch
//! fails), but the Edwards-point decompression of each author key, a few microseconds, is done
//! once per author per connection instead of once per event: a device's events are almost all
//! its own.

use ed25519_dalek::{Signature, VerifyingKey};
use std::collections::HashMap;
use tidings_engine::event::{DecodeError, ENVELOPE_PREFIX_LEN};
use tidings_engine::{DeviceId, Event};

/// Most author keys one connection keeps decoded.
pub const MAX_CACHED_KEYS: usize = 64;

/// Decoded author keys of one connection (bounded: cleared when full).
#[derive(Debug, Default)]
pub struct KeyCache {
    keys: HashMap<DeviceId, VerifyingKey>,
}

impl KeyCache {
    fn get(&mut self, device: &DeviceId) -> Result<VerifyingKey, DecodeError> {
        if let Some(k) = self.keys.get(device) {
            return Ok(*k);
        }
        let key = VerifyingKey::from_bytes(&device.0).map_err(|_| DecodeError::BadKey(*device))?;
        if key.is_weak() {
            return Err(DecodeError::BadKey(*device));
        }
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(*device, key);
        Ok(key)
    }
}

/// The signature bytes of an envelope (`version (1) | id (32) | signature (64) | body`, see
/// docs/FORMAT.md); only called on envelopes that decoded, so the prefix is there.
fn signature_of(envelope: &[u8]) -> Option<Signature> {
    let bytes: [u8; 64] = envelope.get(33..ENVELOPE_PREFIX_LEN)?.try_into().ok()?;
    Some(Signature::from_bytes(&bytes))
}

/// Decodes and verifies envelopes, one result per envelope, in order.
pub fn verify_batch_cached<B: AsRef<[u8]>>(
    envelopes: &[B],
    cache: &mut KeyCache,
) -> Vec<Result<Event, DecodeError>> {
    let mut out: Vec<Result<Event, DecodeError>> = Vec::with_capacity(envelopes.len());
    let mut idx = Vec::with_capacity(envelopes.len());
    let mut sigs = Vec::with_capacity(envelopes.len());
    let mut keys = Vec::with_capacity(envelopes.len());
    for (i, env) in envelopes.iter().enumerate() {
        let parsed = Event::decode_trusted(env.as_ref()).and_then(|e| {
            let key = cache.get(&e.header().author)?;
            let sig = signature_of(env.as_ref()).ok_or(DecodeError::Truncated {
                len: env.as_ref().len(),
            })?;
            Ok((e, key, sig))
        });
        match parsed {
            Ok((e, key, sig)) => {
                idx.push(i);
                keys.push(key);
                sigs.push(sig);
                out.push(Ok(e));
            }
            Err(err) => out.push(Err(err)),
        }
    }
    let ids: Vec<[u8; 32]> = idx
        .iter()
        .filter_map(|&i| out[i].as_ref().ok().map(|e| e.id().0))
        .collect();
    let msgs: Vec<&[u8]> = ids.iter().map(|id| id.as_slice()).collect();
    if ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_err() {
        for (j, &i) in idx.iter().enumerate() {
            if keys[j].verify_strict(msgs[j], &sigs[j]).is_err() {
                out[i] = Err(DecodeError::BadSignature(tidings_engine::EventId(ids[j])));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_engine::{ConversationId, DeviceKey, EventKind, UserId};

    /// Agrees with the engine's `decode_batch` on good, forged and garbled envelopes.
    #[test]
    fn agrees_with_the_engine() {
        let a = DeviceKey::from_seed([1; 32], UserId([9; 32]));
        let b = DeviceKey::from_seed([2; 32], UserId([9; 32]));
        let mut envs: Vec<Vec<u8>> = (1..=12)
            .map(|i| {
                let k = if i % 3 == 0 { &b } else { &a };
                let h = k.header(ConversationId([4; 16]), i, None, i, 0);
                Event::sign(k.signing_key(), h, EventKind::Delivered { up_to: i })
                    .expect("sign")
                    .into_bytes()
            })
            .collect();
        envs[2][40] ^= 1; // signature
        envs[5][5] ^= 1; // id
        envs[7].truncate(20);
        envs.push(vec![]);
        let mut cache = KeyCache::default();
        let ours = verify_batch_cached(&envs, &mut cache);
        let engine = Event::decode_batch(&envs);
        assert_eq!(ours, engine);
        assert_eq!(ours.iter().filter(|r| r.is_ok()).count(), 9);
        // Second pass, keys cached: same answers.
        assert_eq!(verify_batch_cached(&envs, &mut cache), engine);
    }
}

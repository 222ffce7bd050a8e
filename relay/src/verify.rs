//! Verification of submitted envelopes with a per-connection cache of decoded author keys.
//!
//! The checks are the engine's own (`Event::decode_with`: id, event rules, the one signature
//! rule of `tidings_engine::signature`), so the relay accepts exactly what devices accept;
//! only the Edwards-point decompression of each author key, a few microseconds, is done once
//! per author per connection instead of once per event: a device's events are almost all its
//! own.

use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;
use tidings_engine::event::{author_key, DecodeError};
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
        let key = author_key(device)?;
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(*device, key);
        Ok(key)
    }
}

/// Decodes and verifies envelopes, one result per envelope, in order.
pub fn verify_batch_cached<B: AsRef<[u8]>>(
    envelopes: &[B],
    cache: &mut KeyCache,
) -> Vec<Result<Event, DecodeError>> {
    envelopes
        .iter()
        .map(|env| Event::decode_with(env.as_ref(), |author| cache.get(author)))
        .collect()
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
                Event::sign(
                    k.signing_key(),
                    h,
                    EventKind::Delivered {
                        up_to: i,
                        head: None,
                    },
                )
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

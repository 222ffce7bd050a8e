//! Verification of submitted envelopes with a per-connection cache of decoded author keys, on
//! a pool of threads of its own ([`VerifyPool`]).
//!
//! The checks are the engine's own (`Event::decode_with`: id, event rules, the one signature
//! rule of `tidings_engine::signature`), so the relay accepts exactly what devices accept;
//! only the Edwards-point decompression of each author key, a few microseconds, is done once
//! per author per connection instead of once per event: a device's events are almost all its
//! own.

use ed25519_dalek::VerifyingKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tidings_engine::event::{author_key, DecodeError};
use tidings_engine::wire::Envelope;
use tidings_engine::{DeviceId, Event};
use tokio::sync::{mpsc, oneshot};

/// Most author keys one connection keeps decoded.
pub const MAX_CACHED_KEYS: usize = 64;

/// Most submits queued for the verification threads (a connection queues one at a time and
/// waits for it, so this bounds only a burst of many connections).
pub const VERIFY_QUEUE: usize = 1024;

/// One submit's envelopes, verified and answered with the connection's key cache.
type Verified = (Vec<Result<Event, DecodeError>>, KeyCache);

#[derive(Debug)]
struct Job {
    envelopes: Vec<Envelope>,
    keys: KeyCache,
    reply: oneshot::Sender<Verified>,
}

/// Threads that verify submits, so that signature checks (the CPU-heavy part of a submit, tens
/// of microseconds per event) run beside the async runtime rather than on its workers: a
/// worker busy verifying a batch does not poll the QUIC endpoint or other connections, and
/// under a flood that stalls every connection's I/O (packets wait or drop, acks come seconds
/// late for some devices). The OS shares the cores between these threads and the runtime.
///
/// Each connection sends one submit at a time and waits for its result, so its submits reach
/// the core in the order it sent them. The threads stop when the pool is dropped (once the
/// jobs queued are done).
#[derive(Debug)]
pub struct VerifyPool {
    jobs: mpsc::Sender<Job>,
}

impl VerifyPool {
    /// Starts `n_threads` threads (0: one per available core).
    pub fn spawn(n_threads: usize) -> std::io::Result<VerifyPool> {
        let n = match n_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let (jobs, rx) = mpsc::channel::<Job>(VERIFY_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("tidings-verify-{i}"))
                .spawn(move || run_verifier(&rx))?;
        }
        Ok(VerifyPool { jobs })
    }

    /// Verifies `envelopes` on the pool with the connection's `keys`; `None` if the pool
    /// stopped.
    pub async fn verify(&self, envelopes: Vec<Envelope>, keys: KeyCache) -> Option<Verified> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            envelopes,
            keys,
            reply,
        };
        self.jobs.send(job).await.ok()?;
        answer.await.ok()
    }
}

fn run_verifier(jobs: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // One thread waits in the queue at a time; the others wait for the lock.
        let job = match jobs.lock() {
            Ok(mut rx) => rx.blocking_recv(),
            Err(_) => None,
        };
        let Some(mut job) = job else {
            return;
        };
        let results = verify_batch_cached(&job.envelopes, &mut job.keys);
        let _ = job.reply.send((results, job.keys));
    }
}

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
        // On the pool: same answers.
        let pool = VerifyPool::spawn(2).expect("threads");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let envelopes: Vec<Envelope> = envs.iter().map(|e| Envelope(e.clone())).collect();
        let (pooled, _) = rt
            .block_on(pool.verify(envelopes, KeyCache::default()))
            .expect("verified");
        assert_eq!(pooled, engine);
    }
}

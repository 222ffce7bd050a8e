//! Child processes for the crash tests: the relay (`tidings-test-relay`) and a headless device
//! (`tidings-test-device`), both binaries of this package, killed with SIGKILL.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tidings::engine::{DeviceId, DeviceKey, RetryPolicy};
use tidings::replica::Fingerprint;
use tidings::replica::ReplicaConfig;

use crate::common::User;

/// A child process whose stdout lines arrive on a channel (read by a thread, so the pipe never
/// fills). Killed with SIGKILL when dropped.
pub struct Proc {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc { child, lines }
    }

    /// The next stdout line; `None` at the deadline or when the process closed stdout.
    pub fn line_before(&self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.lines.recv_timeout(left).ok()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A relay process and what it printed about itself.
pub struct RelayProc {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub relay_id: DeviceId,
    pub fingerprint: Fingerprint,
}

/// Starts `tidings-test-relay --dev` on `dir`, on `listen` or a free loopback port.
pub fn spawn_relay(dir: &Path, listen: Option<SocketAddr>) -> RelayProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings-test-relay"));
    cmd.arg("--dev").arg("--data-dir").arg(dir);
    if let Some(a) = listen {
        cmd.arg("--listen").arg(a.to_string());
    }
    spawn_relay_cmd(cmd)
}

/// Starts `tidings-test-relay --config <config>` (a TOML file naming its data directory).
pub fn spawn_relay_config(config: &Path) -> RelayProc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings-test-relay"));
    cmd.arg("--config").arg(config);
    spawn_relay_cmd(cmd)
}

/// Runs a relay command and reads its address, id and fingerprint from its banner.
fn spawn_relay_cmd(mut cmd: Command) -> RelayProc {
    cmd.env("RUST_LOG", "error");
    let proc = Proc::spawn(cmd);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut addr, mut relay_id, mut fingerprint) = (None, None, None);
    while addr.is_none() || relay_id.is_none() || fingerprint.is_none() {
        let line = proc
            .line_before(deadline)
            .expect("the relay printed its address, id and fingerprint");
        if let Some(a) = line.strip_prefix("tidings-relay listening on ") {
            addr = Some(a.trim().parse().expect("address"));
        } else if let Some(id) = line.strip_prefix("relay id:") {
            relay_id = Some(DeviceId::from_hex(id.trim()).expect("relay id"));
        } else if let Some(f) = line.strip_prefix("certificate sha256:") {
            fingerprint = Some(f.parse().expect("fingerprint"));
        }
    }
    RelayProc {
        proc,
        addr: addr.expect("addr"),
        relay_id: relay_id.expect("id"),
        fingerprint: fingerprint.expect("fingerprint"),
    }
}

/// Device settings against a relay process, as `net::config` does for an in-process relay.
pub fn replica_config(relay: &RelayProc, key: &DeviceKey, user: &User) -> ReplicaConfig {
    let mut c = ReplicaConfig::new(relay.addr, relay.relay_id, relay.fingerprint);
    c.keepalive = Duration::from_millis(200);
    c.idle_timeout = Duration::from_secs(1);
    c.device.registration = Some(key.certificate(&user.key, 0));
    c.device.retry = RetryPolicy {
        base_ms: 100,
        max_ms: 1_000,
        max_attempts: u32::MAX,
        jitter_pct: 20,
    };
    c.device.reconnect = RetryPolicy {
        base_ms: 50,
        max_ms: 300,
        max_attempts: u32::MAX,
        jitter_pct: 20,
    };
    c.device.ack_timeout_ms = 1_000;
    c
}

/// Arguments of `tidings-test-device` (see its module docs).
pub struct DeviceArgs<'a> {
    pub dir: &'a Path,
    pub relay: SocketAddr,
    pub relay_id: DeviceId,
    pub fingerprint: &'a str,
    pub user_seed: u8,
    pub device_seed: u8,
    pub conversation: tidings::engine::ConversationId,
    pub members: Vec<tidings::engine::UserId>,
    pub count: u64,
    /// Send one media message of this many bytes instead of `count` texts.
    pub media_bytes: Option<u64>,
}

/// Starts a device process that sends `count` numbered messages.
pub fn spawn_device(a: &DeviceArgs<'_>) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings-test-device"));
    cmd.arg("--dir")
        .arg(a.dir)
        .args(["--relay", &a.relay.to_string()])
        .args(["--relay-id", &a.relay_id.to_string()])
        .args(["--cert", a.fingerprint])
        .args(["--user-seed", &a.user_seed.to_string()])
        .args(["--device-seed", &a.device_seed.to_string()])
        .args(["--conversation", &a.conversation.to_string()])
        .args(["--count", &a.count.to_string()])
        .arg("--create")
        .env("RUST_LOG", "error");
    for m in &a.members {
        cmd.args(["--member", &m.to_string()]);
    }
    if let Some(n) = a.media_bytes {
        cmd.args(["--media-bytes", &n.to_string()]);
    }
    Proc::spawn(cmd)
}

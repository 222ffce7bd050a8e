//! The `tidings` command end to end: a relay and two users as real processes on 127.0.0.1.
//! Alice and Bob set up, add each other, Alice sends, Bob reads, Alice sees the blue ticks;
//! bad input gives one clear line and a non-zero exit.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The relay process, killed when dropped.
struct Relay {
    child: Child,
    addr: String,
    pin: String,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay(dir: &Path) -> Relay {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings-cli-test-relay"))
        .arg("--dev")
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("relay starts");
    let out = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(out).lines();
    let (mut addr, mut pin) = (None, None);
    for line in lines.by_ref() {
        let line = line.expect("relay output");
        if let Some(a) = line.strip_prefix("tidings-relay listening on ") {
            addr = Some(a.trim().to_string());
        } else if let Some(p) = line.strip_prefix("pin:") {
            pin = Some(p.trim().to_string());
            break;
        }
    }
    // Stop reading, as a script that took the pin would: the relay must keep serving with its
    // stdout closed (it used to die at its next `println!`).
    drop(lines);
    Relay {
        child,
        addr: addr.expect("address line"),
        pin: pin.expect("pin line"),
    }
}

fn tidings(dir: &Path, args: &[&str]) -> Output {
    tidings_env(dir, args, &[])
}

fn tidings_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidings"));
    cmd.arg("--dir")
        .arg(dir)
        .args(args)
        .env_remove("TIDINGS_PASSPHRASE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("tidings runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "tidings {args:?} panicked: {stderr}"
    );
    out
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with one line on stderr that contains `says`.
fn fails(out: Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected a failure, got success: {stderr}"
    );
    assert_ne!(
        out.status.code(),
        Some(101),
        "a panic's exit code: {stderr}"
    );
    assert!(
        stderr.contains(says),
        "stderr {stderr:?} should say {says:?}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

/// `tidings init` of `name` against `relay`, as it ends.
fn run_init(dir: &Path, relay: &Relay, name: &str, env: &[(&str, &str)]) -> Output {
    tidings_env(
        dir,
        &[
            "init",
            "--relay",
            &relay.addr,
            "--pin",
            &relay.pin,
            "--name",
            name,
        ],
        env,
    )
}

fn init(dir: &Path, relay: &Relay, name: &str, env: &[(&str, &str)]) -> String {
    let out = ok(run_init(dir, relay, name, env), "init");
    out.lines()
        .find_map(|l| l.strip_prefix("contact code:"))
        .expect("a contact code")
        .trim()
        .to_string()
}

/// Runs `args` until its stdout contains `want` (each run connects, catches up and exits).
fn until(dir: &Path, args: &[&str], want: &str, secs: u64) -> String {
    let start = Instant::now();
    loop {
        let out = tidings(dir, args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && stdout.contains(want) {
            return stdout;
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "tidings {args:?} never showed {want:?}; last stdout {stdout:?}, stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A relay and two users, Alice and Bob, who added each other: (temp dir, relay, Alice's
/// directory, Bob's). Keep the first two alive for the test.
fn alice_and_bob() -> (tempfile::TempDir, Relay, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = relay(&tmp.path().join("relay"));
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let alice_code = init(&alice, &relay, "alice", &[]);
    let bob_code = init(&bob, &relay, "bob", &[]);
    ok(
        tidings(&alice, &["contacts", "add", &bob_code]),
        "alice adds bob",
    );
    ok(
        tidings(&bob, &["contacts", "add", &alice_code]),
        "bob adds alice",
    );
    (tmp, relay, alice, bob)
}

#[test]
fn two_users_chat_through_a_relay_and_the_ticks_reach_read() {
    let (_tmp, _relay, alice, bob) = alice_and_bob();

    let sent = until(&alice, &["send", "bob", "hello bob"], "✓", 60);
    assert!(!sent.contains("FAILED"), "{sent}");
    let shown = until(&bob, &["show", "alice"], "alice: hello bob", 60);
    assert!(shown.contains("alice: hello bob"), "{shown}");
    until(&alice, &["show", "bob"], "me: hello bob ✓✓ read", 60);

    let devices = ok(tidings(&bob, &["devices"]), "devices");
    assert!(devices.contains("(this device)"), "{devices}");

    let status = ok(tidings(&bob, &["status"]), "status");
    assert!(status.contains("connection: Online"), "{status}");
    assert!(status.contains("alice: 0 unread"), "{status}");
}

#[test]
fn bad_input_is_one_clear_line_and_a_failure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = relay(&tmp.path().join("relay"));

    // Unknown conversation.
    let alice = tmp.path().join("alice");
    init(&alice, &relay, "alice", &[]);
    fails(
        tidings(&alice, &["send", "nobody", "hi"]),
        "unknown conversation 'nobody'",
    );
    // A command before init.
    fails(
        tidings(&tmp.path().join("nowhere"), &["status"]),
        "run `tidings init` first",
    );
    // A pin that is not one.
    fails(
        tidings(
            &tmp.path().join("x"),
            &[
                "init",
                "--relay",
                &relay.addr,
                "--pin",
                "nonsense",
                "--name",
                "x",
            ],
        ),
        "--pin",
    );

    // An empty passphrase is refused at init, not taken as one.
    fails(
        run_init(
            &tmp.path().join("dave"),
            &relay,
            "dave",
            &[("TIDINGS_PASSPHRASE", "")],
        ),
        "empty passphrase",
    );
    // Wrong passphrase.
    let carol = tmp.path().join("carol");
    init(&carol, &relay, "carol", &[("TIDINGS_PASSPHRASE", "right")]);
    fails(
        tidings_env(&carol, &["status"], &[("TIDINGS_PASSPHRASE", "wrong")]),
        "wrong passphrase",
    );
    fails(tidings(&carol, &["status"]), "protected by a passphrase");
    ok(
        tidings_env(&carol, &["status"], &[("TIDINGS_PASSPHRASE", "right")]),
        "the right passphrase",
    );

    // Unreachable relay: a port nobody listens on.
    let dave = tmp.path().join("dave");
    let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let nowhere = closed.local_addr().expect("addr").to_string();
    drop(closed);
    let out = tidings(
        &dave,
        &[
            "init", "--relay", &nowhere, "--pin", &relay.pin, "--name", "dave",
        ],
    );
    ok(out, "init dave");
    fails(
        tidings(&dave, &["--wait", "2", "status"]),
        "could not reach the relay",
    );

    // The terminal client without a terminal.
    fails(tidings(&alice, &["chat"]), "needs a terminal");

    // A damaged key file.
    std::fs::write(alice.join("device.key"), b"not a key").expect("damage");
    fails(tidings(&alice, &["status"]), "device.key");
}

/// A relay started by a script that went away (its stdout closed before the relay printed its
/// address and pin) keeps serving, and stops cleanly on SIGTERM. It used to panic in
/// `println!` and exit with 101.
#[test]
fn a_relay_keeps_serving_with_its_stdout_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("relay");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidings-cli-test-relay"))
        .arg("--dev")
        .arg("--data-dir")
        .arg(&dir)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("relay starts");
    // Close the read end before the relay can print anything.
    drop(child.stdout.take());
    let listen = dir.join("dev-listen");
    let started = Instant::now();
    while !listen.exists() {
        assert!(
            child.try_wait().expect("relay status").is_none(),
            "the relay exited before it listened"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the relay never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // It prints right after recording its address; give a dying relay ample time to die.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        if let Some(status) = child.try_wait().expect("relay status") {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("the relay died with its stdout closed: {status}; stderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = child.wait().expect("relay exits");
    assert!(status.success(), "the relay did not stop cleanly: {status}");
}

/// The user who creates a pair's conversation (the one whose id sorts first) adds the other
/// while the relay is down: the creation waits in the outbox like a message and the chat
/// starts once the relay is back. Before, it was made only after connecting, so it was never
/// made, and the other side waited for an invitation that never came.
#[test]
fn a_contact_added_while_the_relay_is_down_still_starts_the_conversation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay_dir = tmp.path().join("relay");
    let relay_up = relay(&relay_dir);
    let (alice, bob) = (tmp.path().join("alice"), tmp.path().join("bob"));
    let alice_code = init(&alice, &relay_up, "alice", &[]);
    let bob_code = init(&bob, &relay_up, "bob", &[]);
    let id = |code: &str| code.rsplit_once(':').expect("name:id").1.to_string();
    let ((creator, creator_name), (other, other_name, other_code), creator_code) =
        if id(&alice_code) < id(&bob_code) {
            ((&alice, "alice"), (&bob, "bob", &bob_code), &alice_code)
        } else {
            ((&bob, "bob"), (&alice, "alice", &alice_code), &bob_code)
        };
    drop(relay_up);
    // With the relay down the command cannot confirm anything; what it kept is what counts.
    let _ = tidings(creator, &["--wait", "1", "contacts", "add", other_code]);
    let _relay_back = relay(&relay_dir);
    ok(
        tidings(other, &["contacts", "add", creator_code]),
        "the other side adds the creator",
    );
    until(creator, &["send", other_name, "made offline"], "✓", 60);
    let want = format!("{creator_name}: made offline");
    until(other, &["show", creator_name], &want, 60);
}

/// The line of `out` that starts with `label`, without it.
fn field(out: &str, label: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} line in {out:?}"))
        .trim()
        .to_string()
}

fn join_args<'a>(relay: &'a Relay, code: &'a str) -> Vec<&'a str> {
    vec![
        "init",
        "--link",
        code,
        "--relay",
        &relay.addr,
        "--pin",
        &relay.pin,
    ]
}

/// Alice links a second device with the code `tidings link` shows: it comes with her name and
/// contacts and reads what Bob sends after the link. Alice revokes it: the relay refuses it
/// from then on, and her devices list it as revoked. A mistyped, unknown or used code is one
/// clear line and a failure.
#[test]
fn a_linked_device_reads_new_messages_until_it_is_revoked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = relay(&tmp.path().join("relay"));
    let (alice, phone, bob) = (
        tmp.path().join("alice"),
        tmp.path().join("alice-phone"),
        tmp.path().join("bob"),
    );
    let alice_code = init(&alice, &relay, "alice", &[]);
    let bob_code = init(&bob, &relay, "bob", &[]);
    ok(
        tidings(&alice, &["contacts", "add", &bob_code]),
        "alice adds bob",
    );
    ok(
        tidings(&bob, &["contacts", "add", &alice_code]),
        "bob adds alice",
    );
    until(&bob, &["send", "alice", "before the link"], "✓", 60);

    let shown = ok(tidings(&alice, &["link"]), "link");
    let code = field(&shown, "link code:");

    // A typo is caught by the code's checksum, before anything is sent.
    let mut typo: Vec<char> = code.chars().collect();
    typo[0] = if typo[0] == 'A' { 'B' } else { 'A' };
    let typo: String = typo.into_iter().collect();
    let nowhere = tmp.path().join("nowhere");
    fails(
        tidings(&nowhere, &join_args(&relay, &typo)),
        "not a link code",
    );
    // A well-formed code nobody showed.
    let unknown = tidings_engine::link::LinkSecret::from_bytes([7; 16]).code();
    fails(
        tidings(&nowhere, &join_args(&relay, &unknown)),
        "no link is waiting under this code",
    );
    assert!(!nowhere.join("tidings.toml").exists(), "nothing set up");

    let joined = ok(tidings(&phone, &join_args(&relay, &code)), "join");
    let phone_device = field(&joined, "device:");
    assert!(joined.contains("alice"), "{joined}");
    assert_eq!(field(&joined, "contacts:"), "1", "{joined}");
    // The code is used up.
    fails(
        tidings(&tmp.path().join("again"), &join_args(&relay, &code)),
        "no link is waiting under this code",
    );

    until(&bob, &["send", "alice", "after the link"], "✓", 60);
    until(&phone, &["show", "bob"], "bob: after the link", 60);
    until(&phone, &["send", "bob", "from the phone"], "✓", 60);
    until(&bob, &["show", "alice"], "alice: from the phone", 60);
    until(&alice, &["devices"], &phone_device, 60);

    let revoked = ok(tidings(&alice, &["revoke", &phone_device]), "revoke");
    assert!(
        revoked.contains(&format!("revoked {phone_device}")),
        "{revoked}"
    );
    fails(tidings(&phone, &["status"]), "revoked by its user");
    let devices = ok(tidings(&alice, &["devices"]), "devices");
    assert!(
        devices.contains(&format!("{phone_device}  (revoked)")),
        "{devices}"
    );
    // Revoking again is answered the same; a device id that is not one is refused at once.
    ok(tidings(&alice, &["revoke", &phone_device]), "revoke again");
    fails(tidings(&alice, &["revoke", "xyz"]), "is not a device id");
    // Alice and Bob go on without it.
    until(&bob, &["send", "alice", "after the revocation"], "✓", 60);
    until(&alice, &["show", "bob"], "bob: after the revocation", 60);
}

/// Bob turns read receipts off: Alice's message he reads stays ✓✓ on her side, and by
/// WhatsApp's rule his own message Alice reads shows ✓✓, not read, to him. Turned on again, the
/// read she sent shows.
#[test]
fn with_read_receipts_off_nobody_sees_reads() {
    let (_tmp, _relay, alice, bob) = alice_and_bob();
    let off = ok(tidings(&bob, &["receipts", "off"]), "receipts off");
    assert!(off.contains("read receipts: off"), "{off}");

    until(&alice, &["send", "bob", "hi bob"], "✓", 60);
    // Bob's `show` reads the message and ends only once its outbox is empty: a Read it made
    // would be at the relay before Alice looks.
    until(&bob, &["show", "alice"], "alice: hi bob", 60);
    let seen = until(&alice, &["show", "bob"], "me: hi bob ✓✓", 60);
    assert!(!seen.contains("read"), "Bob's read was sent: {seen}");

    until(&bob, &["send", "alice", "hi alice"], "✓", 60);
    until(&alice, &["show", "bob"], "bob: hi alice", 60);
    let seen = until(&bob, &["show", "alice"], "me: hi alice ✓✓", 60);
    assert!(!seen.contains("read"), "Alice's read shown to Bob: {seen}");
    ok(tidings(&bob, &["receipts", "on"]), "receipts on");
    until(&bob, &["show", "alice"], "me: hi alice ✓✓ read", 60);
}

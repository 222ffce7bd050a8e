//! Architecture invariant: the engine has no async runtime and no socket library.

#[test]
fn engine_depends_on_no_runtime_or_socket_crate() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "tidings-engine",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.contains("automerge "),
        "cargo tree output looks wrong:\n{tree}"
    );
    for banned in [
        "tokio",
        "quinn",
        "quinn-proto",
        "quinn-udp",
        "mio",
        "socket2",
        "async-std",
    ] {
        assert!(
            !tree
                .lines()
                .any(|l| l.split_whitespace().next() == Some(banned)),
            "tidings-engine depends on {banned}:\n{tree}"
        );
    }
}

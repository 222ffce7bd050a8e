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

/// Architecture invariant: the engine never reads the OS random generator; randomness comes in
/// as arguments (`Store::new`'s entropy, `DeviceCore::new`'s seed). Rand's generators are
/// allowed, seeded by the caller; the calls that reach the OS are not.
#[test]
fn engine_source_draws_no_os_randomness() {
    let banned = [
        "from_os_rng",
        "OsRng",
        "thread_rng",
        "rand::rng(",
        "rand::random",
        "getrandom",
        "from_entropy",
    ];
    let mut dirs = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    let mut n_files = 0;
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read engine sources") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                n_files += 1;
                let text = std::fs::read_to_string(&path).expect("read source");
                for b in banned {
                    assert!(
                        !text.contains(b),
                        "{} uses {b}: the engine takes randomness as an argument",
                        path.display()
                    );
                }
            }
        }
    }
    assert!(n_files > 10, "found only {n_files} engine sources");
}

//! A throwaway PostgreSQL server for tests and the load example: `initdb` and `pg_ctl` as the
//! unprivileged `postgres` user in a temporary directory, on a free loopback port; dropping
//! the handle stops it (`pg_ctl stop -m immediate`) and removes the directory.
//!
//! Tests start it with `install = true`: if no server is installed
//! (`/usr/lib/postgresql/*/bin/initdb`), Debian's `postgresql` package is installed with
//! `apt-get` first. A server that cannot be had is an error, never a silent skip.

#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: Option<tempfile::TempDir>,
    port: u16,
    running: bool,
}

/// The newest installed server's `bin` directory, if any.
pub fn find_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

/// Installs Debian's package unless a server appeared meanwhile. The tests of one binary run
/// on parallel threads and would otherwise run apt-get side by side, and all but one would fail
/// on dpkg's lock; another process holding it (an upgrade) is waited for.
fn install() -> Result<()> {
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if find_bin().is_some() {
        return Ok(());
    }
    let run = |args: &[&str]| {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !run(&["install", "-y", "postgresql"]) {
        // The package lists may be missing or stale.
        run(&["update"]);
        if !run(&["install", "-y", "postgresql"]) {
            bail!("apt-get install -y postgresql failed");
        }
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs a server binary, as the `postgres` user when this process is root (the server
/// refuses to run as root).
fn pg_command(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

/// A temporary directory the server's user owns.
fn owned_tempdir() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new().prefix("tidings-pg-").tempdir()?;
    if is_root() {
        check(
            {
                let mut c = Command::new("chown");
                c.args(["postgres:", &dir.path().display().to_string()]);
                c
            },
            "chown",
        )?;
    }
    Ok(dir)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn check(mut c: Command, what: &str) -> Result<()> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl PgServer {
    /// Starts a fresh server. `install`: install Debian's package if no server is found
    /// (tests); otherwise a missing server is an error saying how to get one. `settings` are
    /// extra `-c name=value` server settings.
    pub fn start(install_if_missing: bool, settings: &[&str]) -> Result<PgServer> {
        let bin = match find_bin() {
            Some(b) => b,
            None if install_if_missing => {
                install()?;
                find_bin().context("postgresql installed, but no initdb found")?
            }
            None => bail!(
                "no PostgreSQL server found (/usr/lib/postgresql/*/bin/initdb): install it \
                 with `apt-get install -y postgresql`"
            ),
        };
        let dir = owned_tempdir()?;
        let data = dir.path().join("data");
        check(
            {
                let mut c = pg_command(&bin, "initdb");
                c.arg("-D").arg(&data).args([
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]);
                c
            },
            "initdb",
        )?;
        PgServer::launch(bin, dir, settings)
    }

    /// Starts the server in `dir/data` on a free port.
    fn launch(bin: PathBuf, dir: tempfile::TempDir, settings: &[&str]) -> Result<PgServer> {
        let mut server = PgServer {
            bin,
            dir: Some(dir),
            port: 0,
            running: false,
        };
        let mut last = None;
        // A port found free may be taken before the server binds it: try a few.
        for _ in 0..3 {
            server.port = free_port()?;
            match server.pg_ctl_start(settings) {
                Ok(()) => {
                    server.running = true;
                    return Ok(server);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started on a port of its own.
    /// Make it synchronous with [`PgServer::require_sync_standby`] on the primary.
    pub fn standby_of(primary: &PgServer) -> Result<PgServer> {
        let dir = owned_tempdir()?;
        check(
            {
                let mut c = pg_command(&primary.bin, "pg_basebackup");
                c.arg("-D").arg(dir.path().join("data")).args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    "postgres",
                    "-R",
                    "-X",
                    "stream",
                    // A spread checkpoint would take minutes on an idle server.
                    "--checkpoint=fast",
                    "--no-sync",
                ]);
                c
            },
            "pg_basebackup",
        )?;
        PgServer::launch(primary.bin.clone(), dir, &[])
    }

    /// Runs `sql` on database `postgres` (on a thread of its own, see
    /// [`PgServer::create_database`]).
    pub fn execute(&self, sql: &str) -> Result<()> {
        let admin = self.url("postgres");
        let sql = sql.to_string();
        std::thread::spawn(move || -> Result<()> {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls)?;
            c.batch_execute(&sql)?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("admin session panicked"))?
    }

    /// Commits on this server wait for a standby's flush from now on; returns once a
    /// standby streams synchronously.
    pub fn require_sync_standby(&self) -> Result<()> {
        // Apart: ALTER SYSTEM refuses to run in the implicit transaction of a batch.
        self.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")?;
        self.execute("SELECT pg_reload_conf()")?;
        let admin = self.url("postgres");
        for _ in 0..200 {
            let admin = admin.clone();
            let sync = std::thread::spawn(move || -> Result<bool> {
                let mut c = postgres::Client::connect(&admin, postgres::NoTls)?;
                let rows = c.query(
                    "SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync'",
                    &[],
                )?;
                Ok(!rows.is_empty())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("admin session panicked"))??;
            if sync {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        bail!("no synchronous standby")
    }

    /// Promotes a standby to primary (`pg_ctl promote -w`).
    pub fn promote(&self) -> Result<()> {
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(self.path().join("data"))
            .args(["-w", "promote"]);
        check(c, "pg_ctl promote")
    }

    fn path(&self) -> &Path {
        self.dir
            .as_ref()
            .map_or(Path::new("/nonexistent"), |d| d.path())
    }

    fn pg_ctl_start(&self, settings: &[&str]) -> Result<()> {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.path().display()
        );
        for s in settings {
            opts.push_str(" -c ");
            opts.push_str(s);
        }
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(self.path().join("data"))
            .arg("-l")
            .arg(self.path().join("log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        check(c, "pg_ctl start")
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db} connect_timeout=10",
            self.port
        )
    }

    /// Creates database `name` and returns its connection string.
    /// (On a thread of its own: the sync client runs a runtime, which cannot start inside
    /// an async test's.)
    pub fn create_database(&self, name: &str) -> Result<String> {
        let admin = self.url("postgres");
        let sql = format!("CREATE DATABASE {name}");
        std::thread::spawn(move || -> Result<()> {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls)?;
            c.batch_execute(&sql)?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("CREATE DATABASE panicked"))??;
        Ok(self.url(name))
    }

    /// Stops it as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let mut c = pg_command(&self.bin, "pg_ctl");
        c.arg("-D")
            .arg(self.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        check(c, "pg_ctl stop")
    }

    /// Starts it again on the same port and data (after [`PgServer::stop_immediate`]).
    pub fn restart(&mut self, settings: &[&str]) -> Result<()> {
        self.pg_ctl_start(settings)?;
        self.running = true;
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop_immediate();
        if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
    }
}

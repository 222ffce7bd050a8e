//! `tidings`: set up a user, add contacts, send and read messages, chat in the terminal.
//!
//! Every command works in one data directory (`--dir`, `TIDINGS_DIR`, default
//! `$HOME/.tidings`). Errors are one line on stderr and a non-zero exit, never a panic.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tidings_cli::app::{App, AppEvent, Key};
use tidings_cli::backend::{conn, printable, Names, ReplicaBackend};
use tidings_cli::home::Carried;
use tidings_cli::home::{
    check_name, contact_code, pair_conversation, parse_contact_code, parse_history, Contact, Home,
    Settings,
};
use tidings_cli::session::{bus, Session};
use tidings_engine::link::LinkError;
use tidings_engine::DeviceId;
use tidings_engine::{ConnectionState, ConversationId, Status, UserId};
use tidings_replica::keystore::{Keys, KeystoreError};
use tidings_replica::link::{LinkBundle, LinkJoinError};
use tidings_replica::{Body, ConnectionProblem, HistoryPolicy, RelayPin, Replica, ReplicaError};
use tokio::time::Instant;

/// The longest `--wait`: a deadline past it could overflow the clock.
const MAX_WAIT_SECS: u64 = 86_400;

#[derive(Debug, Parser)]
#[command(
    name = "tidings",
    version,
    about = "offline-first messaging in the terminal"
)]
struct Cli {
    /// Data directory (keys, messages, contacts).
    #[arg(long, env = "TIDINGS_DIR", global = true)]
    dir: Option<PathBuf>,
    /// Passphrase of the user key, if `init` set one. Prefer `TIDINGS_PASSPHRASE`: a flag is
    /// visible to every local user in the process list.
    #[arg(
        long,
        env = "TIDINGS_PASSPHRASE",
        hide_env_values = true,
        global = true
    )]
    passphrase: Option<String>,
    /// Seconds to wait for the relay (connecting, acknowledging, catching up), at most a day.
    #[arg(long, default_value_t = 10, global = true,
          value_parser = clap::value_parser!(u64).range(0..=MAX_WAIT_SECS))]
    wait: u64,
    /// How much history this device hands a newly linked device of the user, and takes when
    /// it is the new one: `all`, `none`, or a number of days (`30d`).
    #[arg(long, default_value = "all", global = true, value_parser = parse_history)]
    history: HistoryPolicy,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates a user identity and its first device here (keys in the key store), or with
    /// `--link`, a new device of an existing user.
    Init {
        /// The relay's address (repeat for more than one).
        #[arg(long, required = true)]
        relay: Vec<SocketAddr>,
        /// The relay's pin, `<relay id>@<certificate sha256>`, as `tidings-relay` prints it.
        #[arg(long)]
        pin: String,
        /// Your name, as contacts see it in your contact code.
        #[arg(long, required_unless_present = "link", conflicts_with = "link")]
        name: Option<String>,
        /// The one-time code `tidings link` showed on one of your devices: this device joins
        /// that user (name and contacts come along).
        #[arg(long, value_name = "CODE")]
        link: Option<String>,
    },
    /// Shows a one-time code that sets up a new device of yours (`tidings init --link`).
    Link,
    /// Revokes one of your devices: the relay refuses it from then on and no new message is
    /// readable on it.
    Revoke {
        /// The device id, as `tidings devices` prints it.
        device: String,
    },
    /// Contacts: add one by its code, or list them.
    Contacts {
        #[command(subcommand)]
        action: ContactsAction,
    },
    /// Sends a message to a contact (by name) or a conversation (by id); waits for ✓.
    Send {
        /// A contact's name or a conversation id.
        to: String,
        /// The message.
        text: String,
    },
    /// Prints a conversation with its ticks, and marks it read.
    Show {
        /// A contact's name or a conversation id.
        to: String,
    },
    /// Connection, outbox and unread messages.
    Status,
    /// This user's devices that this device knows of, revoked ones marked.
    Devices,
    /// Read receipts: `on` (others see when you read their messages) or `off` (nobody does,
    /// and you do not see theirs). Without an argument, shows the setting.
    Receipts {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: Option<String>,
    },
    /// The terminal chat.
    Chat,
}

#[derive(Debug, Subcommand)]
enum ContactsAction {
    /// Adds a contact by the code `tidings init` printed for them.
    Add {
        /// `name:user-id`.
        code: String,
        /// The name to show (default: the name in the code).
        #[arg(long)]
        name: Option<String>,
    },
    /// Lists the contacts.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidings: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidings: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dir = match &cli.dir {
        Some(d) => d.clone(),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".tidings"))
            .context("no --dir and no HOME")?,
    };
    let home = Home::new(dir);
    let wait = Duration::from_secs(cli.wait);
    match &cli.command {
        Command::Init {
            relay,
            pin,
            name,
            link: None,
        } => init(&home, &cli, relay, pin, name.as_deref().unwrap_or_default()),
        Command::Init {
            relay,
            pin,
            link: Some(code),
            ..
        } => join(&home, &cli, relay, pin, code, wait).await,
        Command::Link => link(&home, &cli, wait).await,
        Command::Revoke { device } => revoke(&home, &cli, device, wait).await,
        Command::Receipts { state } => {
            let mut settings = home.settings()?;
            if let Some(state) = state {
                settings.read_receipts = state == "on";
                home.save_settings(&settings)?;
            }
            let now = if settings.read_receipts { "on" } else { "off" };
            println!("read receipts: {now}");
            Ok(())
        }
        Command::Contacts {
            action: ContactsAction::List,
        } => {
            for c in home.contacts()? {
                println!("{}\t{}", c.name, c.user);
            }
            Ok(())
        }
        Command::Contacts {
            action: ContactsAction::Add { code, name },
        } => add_contact(&home, &cli, code, name.as_deref(), wait).await,
        Command::Send { to, text } => send(&home, &cli, to, text, wait).await,
        Command::Show { to } => show(&home, &cli, to, wait).await,
        Command::Status => status(&home, &cli, wait).await,
        Command::Devices => devices(&home, &cli, wait).await,
        Command::Chat => chat(&home, &cli).await,
    }
}

fn passphrase(cli: &Cli) -> Option<&[u8]> {
    cli.passphrase.as_deref().map(str::as_bytes)
}

fn init(home: &Home, cli: &Cli, relay: &[SocketAddr], pin: &str, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let pin: RelayPin = pin.parse().context("--pin")?;
    if cli.passphrase.as_deref() == Some("") {
        bail!("an empty passphrase protects nothing: leave TIDINGS_PASSPHRASE unset for none");
    }
    if home.settings().is_ok() {
        bail!("{} is set up already", home.dir.display());
    }
    // Owner only: besides the keys it holds the log, the contacts and the settings.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&home.dir)
        .with_context(|| format!("creating {}", home.dir.display()))?;
    let keys = Keys::create(&home.dir, passphrase(cli)).map_err(keystore_error)?;
    home.save_settings(&Settings {
        name: name.to_string(),
        relay: relay.to_vec(),
        pin: pin.to_string(),
        read_receipts: true,
    })?;
    println!("user:         {}", keys.user);
    println!("device:       {}", keys.device_key().device());
    println!("contact code: {}", contact_code(name, keys.user));
    Ok(())
}

fn keystore_error(e: KeystoreError) -> anyhow::Error {
    match e {
        KeystoreError::PassphraseRequired => anyhow::anyhow!(
            "the user key is protected by a passphrase: give --passphrase or TIDINGS_PASSPHRASE"
        ),
        KeystoreError::WrongPassphrase => anyhow::anyhow!("wrong passphrase"),
        e => anyhow::anyhow!("the key store: {e}"),
    }
}

/// A device opened on `home`, with its settings and keys.
struct Device {
    replica: Replica,
    settings: Settings,
    user: UserId,
    keys: Keys,
}

async fn open(home: &Home, cli: &Cli) -> anyhow::Result<Device> {
    let settings = home.settings()?;
    let pin = home.pin(&settings)?;
    let keys = Keys::load(&home.dir, passphrase(cli)).map_err(keystore_error)?;
    let user = keys.user;
    let replica = Replica::builder(&home.dir)
        .relay(settings.relay.clone(), pin)
        .keys(keys.clone())
        .read_receipts(settings.read_receipts)
        .history(cli.history)
        .open()
        .await
        .map_err(|e| match e {
            ReplicaError::AlreadyOpen { .. } => anyhow::anyhow!(
                "{} is in use by another tidings command (a `tidings chat`?)",
                home.dir.display()
            ),
            e => anyhow::Error::new(e).context("opening the data directory"),
        })?;
    Ok(Device {
        replica,
        settings,
        user,
        keys,
    })
}

/// Waits until the device is online and caught up.
async fn connect(d: &Device, wait: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    let mut updates = d.replica.updates();
    loop {
        let s = d.replica.connection().await?;
        if s.state == ConnectionState::Online {
            return Ok(());
        }
        if s.problem == Some(ConnectionProblem::Revoked) {
            bail!(
                "this device was revoked by its user: set it up again as a new device \
                 (tidings init --link, with a code from one of your other devices)"
            );
        }
        match tokio::time::timeout_at(deadline, updates.next()).await {
            Ok(Some(_)) => {}
            Ok(None) => bail!("the device closed"),
            Err(_) => {
                let why = s.problem.map(|p| format!(": {p}")).unwrap_or_default();
                let addrs: Vec<String> = d.settings.relay.iter().map(|a| a.to_string()).collect();
                bail!(
                    "could not reach the relay at {} within {} s{why}",
                    addrs.join(", "),
                    wait.as_secs()
                );
            }
        }
    }
}

/// Accepts the invitations of the conversations with contacts (a contact who added this user
/// created it), then waits (until `deadline`) for `want` to be known here, if given.
async fn accept_contacts(
    d: &Device,
    home: &Home,
    want: Option<ConversationId>,
    deadline: Instant,
) -> anyhow::Result<bool> {
    let ours: Vec<ConversationId> = home
        .contacts()?
        .iter()
        .filter_map(|c| ConversationId::from_hex(&c.conversation))
        .collect();
    loop {
        for inv in d.replica.invitations().await? {
            if ours.contains(&inv.conversation) {
                d.replica.accept(inv.conversation).await?;
            }
        }
        let Some(c) = want else { return Ok(true) };
        if d.replica.conversation(c).await.is_ok() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the outbox is empty (what this command wrote reached the relay).
async fn drain(d: &Device, deadline: Instant) -> anyhow::Result<bool> {
    loop {
        if d.replica.outbox().await?.is_empty() {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn add_contact(
    home: &Home,
    cli: &Cli,
    code: &str,
    name: Option<&str>,
    wait: Duration,
) -> anyhow::Result<()> {
    let (code_name, them) = parse_contact_code(code)?;
    let name = match name.map(str::to_string).or(code_name) {
        Some(n) => n,
        None => bail!("the code has no name: give --name"),
    };
    check_name(&name)?;
    let d = open(home, cli).await?;
    if them == d.user {
        bail!("that is your own contact code");
    }
    let conversation = pair_conversation(d.user, them);
    home.save_contact(Contact {
        name: name.clone(),
        user: them.to_string(),
        conversation: conversation.to_string(),
    })?;
    let deadline = Instant::now() + wait;
    // The one whose id sorts first creates the conversation; the other accepts its
    // invitation. Whoever adds first, both end in the same conversation. The creation is
    // local first, like a message: with the relay down it waits in the outbox and leaves with
    // the next command that connects.
    let creator = d.user.0 < them.0;
    if creator && d.replica.conversation(conversation).await.is_err() {
        d.replica
            .create_conversation(conversation, vec![them])
            .await?;
    }
    let result = async {
        connect(&d, wait).await?;
        if creator {
            if !drain(&d, deadline).await? {
                bail!(
                    "the relay did not confirm the conversation within {} s",
                    wait.as_secs()
                );
            }
            println!("added {name}");
        } else if accept_contacts(&d, home, Some(conversation), deadline).await? {
            println!("added {name}");
        } else {
            println!("added {name}; the conversation starts once {name} adds you too");
        }
        Ok(())
    }
    .await;
    d.replica.close().await?;
    result
}

fn tick(s: Status) -> &'static str {
    match s {
        Status::Pending => "⏰",
        Status::Failed => "FAILED",
        Status::Sent => "✓",
        Status::Delivered => "✓✓",
        Status::Read => "✓✓ read",
    }
}

async fn send(home: &Home, cli: &Cli, to: &str, text: &str, wait: Duration) -> anyhow::Result<()> {
    let conversation = home.resolve(to)?;
    let d = open(home, cli).await?;
    let deadline = Instant::now() + wait;
    let result = async {
        let online = connect(&d, wait).await;
        if online.is_ok() {
            accept_contacts(&d, home, Some(conversation), deadline).await?;
        }
        let id = match d.replica.send(conversation, text.as_bytes().to_vec()).await {
            Ok(id) => id,
            Err(ReplicaError::UnknownConversation(_)) => bail!(
                "the conversation with '{to}' has not started: they have to add you too \
                 (tidings contacts add <your code>)"
            ),
            Err(e) => return Err(e.into()),
        };
        online.context("the message is saved and goes out with the next tidings command")?;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, d.replica.wait_for(conversation, id, Status::Sent)).await {
            Ok(Ok(shown)) => {
                println!("{id} {}", tick(shown.view.status));
                Ok(())
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!(
                "the relay did not confirm {id} within {} s; it stays queued",
                wait.as_secs()
            ),
        }
    }
    .await;
    d.replica.close().await?;
    result
}

async fn show(home: &Home, cli: &Cli, to: &str, wait: Duration) -> anyhow::Result<()> {
    let conversation = home.resolve(to)?;
    let d = open(home, cli).await?;
    let deadline = Instant::now() + wait;
    let result = async {
        connect(&d, wait).await?;
        if !accept_contacts(&d, home, Some(conversation), deadline).await? {
            bail!("the conversation with '{to}' has not started: they have to add you too");
        }
        let names = Names::load(home, d.user)?;
        for r in d.replica.page(conversation, None, 50).await? {
            let line = names.line(&r);
            let body = match &r.body {
                Body::Text(t) | Body::Clear(t) => printable(t),
                Body::WaitingForKey(_) => "(waiting for key)".into(),
                Body::Media(m) => format!("{} [{} media]", printable(&m.caption), m.media.len()),
                _ => "(unreadable)".into(),
            };
            if line.mine {
                println!("{}: {body} {}", line.author, tick(line.status));
            } else {
                println!("{}: {body}", line.author);
            }
        }
        d.replica.mark_read(conversation, None).await?;
        drain(&d, deadline).await?;
        Ok(())
    }
    .await;
    d.replica.close().await?;
    result
}

async fn status(home: &Home, cli: &Cli, wait: Duration) -> anyhow::Result<()> {
    let d = open(home, cli).await?;
    let online = connect(&d, wait).await;
    let result = async {
        let s = d.replica.connection().await?;
        println!("user:       {} ({})", d.settings.name, d.user);
        println!("device:     {}", d.replica.device());
        match &s.problem {
            Some(p) => println!("connection: {:?} ({p})", s.state),
            None => println!("connection: {:?}", s.state),
        }
        println!("outbox:     {} waiting", d.replica.outbox().await?.len());
        let names = Names::load(home, d.user)?;
        for c in d.replica.conversations().await? {
            println!("{}: {} unread", names.conversation(c.id), c.unread);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    d.replica.close().await?;
    result?;
    online
}

async fn devices(home: &Home, cli: &Cli, wait: Duration) -> anyhow::Result<()> {
    let d = open(home, cli).await?;
    let online = connect(&d, wait).await;
    let result = async {
        let me = d.replica.device();
        for entry in d.replica.device_list(d.user).await? {
            let mark = match (entry.id == me, entry.revoked) {
                (true, _) => "  (this device)",
                (false, true) => "  (revoked)",
                (false, false) => "",
            };
            println!("{}{mark}", entry.id);
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    d.replica.close().await?;
    result?;
    online
}

/// `tidings link`: leaves this user's keys, name and contacts at the relay for a new device,
/// sealed under a one-time code, and shows the code.
async fn link(home: &Home, cli: &Cli, wait: Duration) -> anyhow::Result<()> {
    let d = open(home, cli).await?;
    let result = async {
        connect(&d, wait).await?;
        let carried = Carried {
            name: d.settings.name.clone(),
            contact: home.contacts()?,
            read_receipts: d.settings.read_receipts,
        };
        let pin = home.pin(&d.settings)?;
        let bundle = LinkBundle::new(&d.keys, d.settings.relay.clone(), pin, carried.encode()?);
        let invite = match tokio::time::timeout(wait, d.replica.link_device(&bundle)).await {
            Ok(Ok(invite)) => invite,
            Ok(Err(ReplicaError::Link(LinkJoinError::Link(LinkError::TooLarge { .. })))) => {
                bail!("too many contacts to carry in a link code")
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => bail!(
                "the relay did not take the link within {} s",
                wait.as_secs()
            ),
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let minutes = invite.expires_ms.saturating_sub(now_ms).div_ceil(60_000);
        let addrs: Vec<String> = d.settings.relay.iter().map(|a| a.to_string()).collect();
        println!("link code:    {}", invite.code);
        println!("valid for:    {minutes} minutes, once");
        println!(
            "on the new device: tidings init --link {} --relay {} --pin {}",
            invite.code,
            addrs.join(" --relay "),
            d.settings.pin
        );
        Ok(())
    }
    .await;
    d.replica.close().await?;
    result
}

/// `tidings init --link <code>`: takes the bundle `tidings link` left, makes this device's own
/// keys for that user, and registers with the relay.
async fn join(
    home: &Home,
    cli: &Cli,
    relay: &[SocketAddr],
    pin: &str,
    code: &str,
    wait: Duration,
) -> anyhow::Result<()> {
    let pin: RelayPin = pin.parse().context("--pin")?;
    if cli.passphrase.as_deref() == Some("") {
        bail!("an empty passphrase protects nothing: leave TIDINGS_PASSPHRASE unset for none");
    }
    if home.settings().is_ok() {
        bail!("{} is set up already", home.dir.display());
    }
    let bundle = tidings_replica::link::join(relay, &pin, code)
        .await
        .map_err(|e| match e {
            LinkJoinError::Code(e) => anyhow::anyhow!("--link: not a link code: {e}"),
            LinkJoinError::Link(LinkError::NotFound) => anyhow::anyhow!(
                "no link is waiting under this code: it is wrong, expired, or was used already \
                 (run `tidings link` again on your other device)"
            ),
            e => anyhow::Error::new(e),
        })?;
    let carried = Carried::decode(&bundle.app)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&home.dir)
        .with_context(|| format!("creating {}", home.dir.display()))?;
    let keys = Keys::create_linked(&home.dir, passphrase(cli), bundle.user_secret.clone())
        .map_err(keystore_error)?;
    home.save_contacts(carried.contact.clone())?;
    // The addresses that just reached the relay, rather than the old device's view of it.
    home.save_settings(&Settings {
        name: carried.name.clone(),
        relay: relay.to_vec(),
        pin: pin.to_string(),
        read_receipts: carried.read_receipts,
    })?;
    println!("user:         {} ({})", carried.name, keys.user);
    println!("device:       {}", keys.device_key().device());
    println!("contacts:     {}", carried.contact.len());
    let d = open(home, cli).await?;
    let online = connect(&d, wait).await;
    d.replica.close().await?;
    online.context("linked; the relay takes this device with the next tidings command")
}

/// `tidings revoke <device>`.
async fn revoke(home: &Home, cli: &Cli, device: &str, wait: Duration) -> anyhow::Result<()> {
    let Some(id) = DeviceId::from_hex(device.trim()) else {
        bail!("'{device}' is not a device id (64 hex digits, as `tidings devices` prints it)");
    };
    let d = open(home, cli).await?;
    let result = async {
        if id == d.replica.device() {
            bail!("that is this device: revoke it from another of your devices");
        }
        connect(&d, wait).await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let revocation = d.keys.revocation(id, now_ms);
        match tokio::time::timeout(wait, d.replica.revoke_device(revocation)).await {
            Ok(Ok(())) => {
                println!("revoked {id}");
                Ok(())
            }
            Ok(Err(ReplicaError::Refused { reason, .. })) => {
                bail!("the relay refused to revoke {id}: {reason}")
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => bail!("the relay did not confirm within {} s", wait.as_secs()),
        }
    }
    .await;
    d.replica.close().await?;
    result
}

async fn chat(home: &Home, cli: &Cli) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("`tidings chat` needs a terminal; for scripts use `tidings send` and `tidings show`");
    }
    let d = open(home, cli).await?;
    let names = Names::load(home, d.user)?;
    let backend = ReplicaBackend::new(d.replica.clone(), names);
    let (tx, rx) = bus();
    backend.forward_updates(tx.clone());
    let first = d.replica.connection().await?;
    tx.send(AppEvent::Connection(conn(&first))).await?;
    // Contacts who added this user while it was away: take their conversations.
    {
        let (replica, home) = (d.replica.clone(), home.clone());
        let ours: Vec<ConversationId> = home
            .contacts()?
            .iter()
            .filter_map(|c| ConversationId::from_hex(&c.conversation))
            .collect();
        // Subscribed before the sweep, so an invitation that arrives in between is not missed;
        // one that failed to be accepted is tried again at the next connection.
        let mut updates = replica.updates();
        let errors = tx.clone();
        tokio::spawn(async move {
            let accept_ours = || async {
                for inv in replica.invitations().await? {
                    if ours.contains(&inv.conversation) {
                        replica.accept(inv.conversation).await?;
                    }
                }
                Ok::<(), ReplicaError>(())
            };
            let mut sweep = true;
            loop {
                if sweep {
                    if let Err(e) = accept_ours().await {
                        let _ = errors
                            .send(AppEvent::Error(format!("accepting a contact: {e}")))
                            .await;
                    }
                }
                sweep = match updates.next().await {
                    None => break,
                    Some(tidings_replica::Update::Invited(inv)) => ours.contains(&inv.conversation),
                    Some(tidings_replica::Update::Connection(c)) => {
                        c.state == ConnectionState::Online
                    }
                    Some(tidings_replica::Update::Lagged { .. }) => true,
                    Some(_) => false,
                };
            }
        });
    }
    let keys = tx.clone();
    std::thread::spawn(move || read_keys(keys));
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            // try_init may have switched raw mode on before it failed.
            let _ = ratatui::try_restore();
            d.replica.close().await?;
            bail!("setting up the terminal: {e}");
        }
    };
    let result = Session::new(App::new(d.settings.name.clone()), backend)
        .run(&mut terminal, rx)
        .await;
    let restored = ratatui::try_restore();
    d.replica.close().await?;
    restored.context("restoring the terminal")?;
    result
}

/// The terminal's keys onto the bus, until the bus is gone.
fn read_keys(bus: tokio::sync::mpsc::Sender<AppEvent>) {
    use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
    while let Ok(ev) = event::read() {
        let Event::Key(k) = ev else { continue };
        if k.kind != KeyEventKind::Press {
            continue;
        }
        let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
        let key = match k.code {
            KeyCode::Char('c') if ctrl => Key::Quit,
            KeyCode::Char('r') if ctrl => Key::Retry,
            KeyCode::Char(c) => Key::Char(c),
            KeyCode::Enter => Key::Enter,
            KeyCode::Backspace => Key::Backspace,
            KeyCode::Up => Key::Up,
            KeyCode::Down => Key::Down,
            KeyCode::PageUp => Key::PageUp,
            KeyCode::Esc => Key::Quit,
            _ => continue,
        };
        if bus.blocking_send(AppEvent::Key(key)).is_err() {
            return;
        }
    }
}

//! The `tidings` data directory: the key store and the replica's database (see
//! `tidings_replica::keystore`), plus two small TOML files of this command's own.
//!
//! - `tidings.toml`: this user's name, the relay's addresses and its pin;
//! - `contacts.toml`: each contact's name, user id and the conversation with them.

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tidings_engine::{ConversationId, UserId};
use tidings_replica::{HistoryPolicy, RelayPin};

/// File of the settings.
pub const SETTINGS_FILE: &str = "tidings.toml";
/// File of the contacts.
pub const CONTACTS_FILE: &str = "contacts.toml";
/// Longest contact or user name.
pub const MAX_NAME_LEN: usize = 64;

/// What `tidings init` wrote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Settings {
    /// This user's name (shown to the user, and put in the contact code).
    pub name: String,
    /// The relay's addresses, dialed in turn.
    pub relay: Vec<SocketAddr>,
    /// The relay's pin, `<relay id>@<certificate sha256>`.
    pub pin: String,
    /// Whether this user sends read receipts (`tidings receipts on|off`; copied to a device
    /// `tidings link` sets up). Off, others' READ shows as DELIVERED too.
    #[serde(default = "on")]
    pub read_receipts: bool,
}

fn on() -> bool {
    true
}

/// What `tidings link` carries to the new device besides the user's keys and the relay: the
/// user's name and contacts (inside the sealed link bundle, see `tidings_replica::link`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried {
    /// The user's name.
    pub name: String,
    /// The contacts.
    #[serde(default)]
    pub contact: Vec<Contact>,
    /// The user's read receipt setting.
    #[serde(default = "on")]
    pub read_receipts: bool,
}

impl Carried {
    /// The bytes the bundle carries.
    pub fn encode(&self) -> anyhow::Result<Vec<u8>> {
        Ok(toml::to_string(self)?.into_bytes())
    }

    /// Reads what [`Carried::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> anyhow::Result<Carried> {
        let text = std::str::from_utf8(bytes).context("the link bundle's settings are damaged")?;
        let c: Carried = toml::from_str(text).context("the link bundle's settings are damaged")?;
        check_name(&c.name)?;
        Ok(c)
    }
}

/// One contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The name shown.
    pub name: String,
    /// Their user id (hex).
    pub user: String,
    /// The conversation with them (hex).
    pub conversation: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ContactsFile {
    #[serde(default)]
    contact: Vec<Contact>,
}

/// The data directory.
#[derive(Clone, Debug)]
pub struct Home {
    /// Where it is.
    pub dir: PathBuf,
}

impl Home {
    /// The directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Home {
        Home { dir: dir.into() }
    }

    /// The settings; a clear error when `tidings init` has not run here.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let path = self.dir.join(SETTINGS_FILE);
        if !path.exists() {
            bail!(
                "{} is not set up: run `tidings init` first (or pass --dir)",
                self.dir.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
    }

    /// Writes the settings.
    pub fn save_settings(&self, s: &Settings) -> anyhow::Result<()> {
        write(&self.dir.join(SETTINGS_FILE), &toml::to_string(s)?)
    }

    /// The relay's pin from the settings.
    pub fn pin(&self, s: &Settings) -> anyhow::Result<RelayPin> {
        s.pin
            .parse()
            .with_context(|| format!("the pin in {} is damaged", SETTINGS_FILE))
    }

    /// Every contact.
    pub fn contacts(&self) -> anyhow::Result<Vec<Contact>> {
        let path = self.dir.join(CONTACTS_FILE);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: ContactsFile =
            toml::from_str(&text).with_context(|| format!("{} is damaged", path.display()))?;
        Ok(file.contact)
    }

    /// Adds or renames a contact.
    pub fn save_contact(&self, c: Contact) -> anyhow::Result<()> {
        let mut contacts = self.contacts()?;
        contacts.retain(|o| o.user != c.user);
        contacts.push(c);
        let file = ContactsFile { contact: contacts };
        write(&self.dir.join(CONTACTS_FILE), &toml::to_string(&file)?)
    }

    /// Writes every contact at once (a device set up by `tidings init --link`).
    pub fn save_contacts(&self, contacts: Vec<Contact>) -> anyhow::Result<()> {
        let file = ContactsFile { contact: contacts };
        write(&self.dir.join(CONTACTS_FILE), &toml::to_string(&file)?)
    }

    /// The conversation `to` names: a contact's name, or a conversation id in hex.
    pub fn resolve(&self, to: &str) -> anyhow::Result<ConversationId> {
        let contacts = self.contacts()?;
        if let Some(c) = contacts.iter().find(|c| c.name == to) {
            return ConversationId::from_hex(&c.conversation)
                .with_context(|| format!("{CONTACTS_FILE} is damaged"));
        }
        if let Some(id) = ConversationId::from_hex(to) {
            return Ok(id);
        }
        let known: Vec<&str> = contacts.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "unknown conversation '{to}': not a contact's name (contacts: {}) nor a conversation id",
            if known.is_empty() {
                "none yet; add one with `tidings contacts add <code>`".to_string()
            } else {
                known.join(", ")
            }
        )
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    // Owner only, like the directory: contacts and settings are nobody else's business.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// The conversation two users share as contacts: the same on both sides, whoever adds first.
pub fn pair_conversation(a: UserId, b: UserId) -> ConversationId {
    let (lo, hi) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    let mut h = blake3::Hasher::new();
    h.update(b"tidings contact conversation v1");
    h.update(&lo.0);
    h.update(&hi.0);
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    ConversationId(id)
}

/// A contact code: `name:user-id-hex`, what `tidings init` prints for others to add.
pub fn contact_code(name: &str, user: UserId) -> String {
    format!("{name}:{user}")
}

/// Parses a contact code (`name:hex`, or the bare user id in hex).
pub fn parse_contact_code(code: &str) -> anyhow::Result<(Option<String>, UserId)> {
    let code = code.trim();
    let (name, hex) = match code.rsplit_once(':') {
        Some((n, h)) => (Some(n.to_string()), h),
        None => (None, code),
    };
    let Some(user) = UserId::from_hex(hex) else {
        bail!("'{code}' is not a contact code (name:64 hex digits, as `tidings init` prints it)");
    };
    if let Some(n) = &name {
        check_name(n)?;
    }
    Ok((name, user))
}

/// A name is 1 to [`MAX_NAME_LEN`] characters, no control characters, no ':'.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.chars().count() > MAX_NAME_LEN
        || name.chars().any(|c| c.is_control() || c == ':')
    {
        bail!("'{name}' is not a usable name (1 to {MAX_NAME_LEN} characters, no ':')");
    }
    Ok(())
}

/// The `--history` flag: `all`, `none`, or a number of days (`30d` or `30`).
pub fn parse_history(s: &str) -> Result<HistoryPolicy, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "all" => Ok(HistoryPolicy::All),
        "none" | "nothing" => Ok(HistoryPolicy::Nothing),
        other => other
            .strip_suffix('d')
            .unwrap_or(other)
            .parse::<u32>()
            .map(HistoryPolicy::LastDays)
            .map_err(|_| format!("`{s}`: expected all, none, or a number of days such as 30d")),
    }
}

#[cfg(test)]
mod history_flag_tests {
    use super::*;

    #[test]
    fn the_history_flag_reads_all_none_and_days() {
        assert_eq!(parse_history("all"), Ok(HistoryPolicy::All));
        assert_eq!(parse_history("None"), Ok(HistoryPolicy::Nothing));
        assert_eq!(parse_history("30d"), Ok(HistoryPolicy::LastDays(30)));
        assert_eq!(parse_history("7"), Ok(HistoryPolicy::LastDays(7)));
        assert!(parse_history("soon").is_err());
        assert!(parse_history("-3d").is_err());
    }
}

//! Reading rows back, for the full loads at start and for the change feed: every column is
//! read with `try_get` and every record decoded, so a damaged or foreign row is a typed
//! [`StoreError`], never a panic.

use super::arr;
use crate::core::store::{ConversationRecord, Decision, InvitationRecord, StoreError};
use crate::storage::{ChangeSeq, Changes};
use postgres::types::ToSql;
use postgres::{Client, GenericClient, IsolationLevel};
use tidings_engine::wire::{DeviceRegistration, DeviceRevocation};
use tidings_engine::{ConversationId, DeviceId, UserId};

/// Query parameters.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Rows of (device, postcard record) whose record must name the device it is stored under;
/// `corrupt` says what is damaged when a record does not decode, or names another device.
pub(super) fn per_device<T: serde::de::DeserializeOwned>(
    c: &mut impl GenericClient,
    sql: &str,
    params: Params<'_>,
    corrupt: (&'static str, &'static str),
    device_of: impl Fn(&T) -> DeviceId,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for row in c.query(sql, params)? {
        let r: T =
            postcard::from_bytes(row.try_get(1)?).map_err(|_| StoreError::Corrupt(corrupt.0))?;
        if device_of(&r).0[..] != *row.try_get::<_, &[u8]>(0)? {
            return Err(StoreError::Corrupt(corrupt.1));
        }
        out.push(r);
    }
    Ok(out)
}

pub(super) fn decode_record(bytes: &[u8]) -> Result<ConversationRecord, StoreError> {
    postcard::from_bytes(bytes).map_err(|_| StoreError::Corrupt("conversation record"))
}

/// Rows of (id, record).
pub(super) fn conversation_rows(
    c: &mut impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<(ConversationId, ConversationRecord)>, StoreError> {
    let mut out = Vec::new();
    for row in c.query(sql, params)? {
        out.push((
            ConversationId(arr(row.try_get(0)?, "conversation id")?),
            decode_record(row.try_get(1)?)?,
        ));
    }
    Ok(out)
}

/// Rows of (conversation, user).
pub(super) fn former_rows(
    c: &mut impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<(ConversationId, UserId)>, StoreError> {
    let mut out = Vec::new();
    for row in c.query(sql, params)? {
        out.push((
            ConversationId(arr(row.try_get(0)?, "conversation id")?),
            UserId(arr(row.try_get(1)?, "user id")?),
        ));
    }
    Ok(out)
}

/// Rows of (user, conversation, decision, inviter).
pub(super) fn invitation_rows(
    c: &mut impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<InvitationRecord>, StoreError> {
    let mut out = Vec::new();
    for row in c.query(sql, params)? {
        let decision = match row.try_get::<_, i16>(2)? {
            0 => Decision::Pending,
            1 => Decision::Accepted,
            2 => Decision::Declined,
            _ => return Err(StoreError::Corrupt("invitation decision")),
        };
        out.push(InvitationRecord {
            user: UserId(arr(row.try_get(0)?, "user id")?),
            conversation: ConversationId(arr(row.try_get(1)?, "conversation id")?),
            decision,
            inviter: UserId(arr(row.try_get(3)?, "user id")?),
        });
    }
    Ok(out)
}

/// Rows of (user, other, active).
pub(super) fn block_rows(
    c: &mut impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<(UserId, UserId, bool)>, StoreError> {
    let mut out = Vec::new();
    for row in c.query(sql, params)? {
        out.push((
            UserId(arr(row.try_get(0)?, "user id")?),
            UserId(arr(row.try_get(1)?, "user id")?),
            row.try_get(2)?,
        ));
    }
    Ok(out)
}

fn position_i64(c: &mut impl GenericClient) -> Result<i64, StoreError> {
    Ok(c.query_one(
        "SELECT value FROM tidings_meta WHERE key = 'change_seq'",
        &[],
    )?
    .try_get(0)?)
}

/// The feed's position now.
pub(super) fn position(c: &mut Client) -> Result<ChangeSeq, StoreError> {
    let p = position_i64(c)?;
    Ok(ChangeSeq(
        u64::try_from(p).map_err(|_| StoreError::Corrupt("change_seq"))?,
    ))
}

/// The feed after `after`: one cheap read when nothing changed, else every changed row in
/// one snapshot (so the position returned covers exactly what is returned).
pub(super) fn changes(c: &mut Client, after: ChangeSeq) -> Result<Changes, StoreError> {
    let from = i64::try_from(after.0).unwrap_or(i64::MAX);
    if position_i64(c)? <= from {
        return Ok(Changes::none(after));
    }
    let mut tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let upto = position_i64(&mut tx)?;
    let p: Params<'_> = &[&from, &upto];
    let range = "change_seq > $1 AND change_seq <= $2";
    let changes = Changes {
        upto: ChangeSeq(u64::try_from(upto).map_err(|_| StoreError::Corrupt("change_seq"))?),
        conversations: conversation_rows(
            &mut tx,
            &format!("SELECT id, record FROM conversations WHERE record IS NOT NULL AND {range}"),
            p,
        )?,
        former: former_rows(
            &mut tx,
            &format!("SELECT conversation, user_id FROM former_members WHERE {range}"),
            p,
        )?,
        registrations: per_device(
            &mut tx,
            &format!("SELECT device, cert FROM device_certs WHERE {range}"),
            p,
            ("device certificate", "device certificate under another key"),
            |r: &DeviceRegistration| r.device,
        )?,
        revocations: per_device(
            &mut tx,
            &format!("SELECT device, revocation FROM revocations WHERE {range}"),
            p,
            ("device revocation", "device revocation under another key"),
            |r: &DeviceRevocation| r.device,
        )?,
        invitations: invitation_rows(
            &mut tx,
            &format!(
                "SELECT user_id, conversation, decision, inviter FROM invitations WHERE {range}"
            ),
            p,
        )?,
        blocks: block_rows(
            &mut tx,
            &format!("SELECT user_id, other, active FROM blocked WHERE {range}"),
            p,
        )?,
    };
    tx.commit()?;
    Ok(changes)
}

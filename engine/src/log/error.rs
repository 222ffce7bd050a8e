//! Why the log could not do something.

use crate::event::DecodeError;

/// Why the log could not do something.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// redb failed (I/O, a full disk, corruption it detected).
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    /// Another `EventLog` (in this process or another) has the file open.
    #[error("{0} is already open")]
    AlreadyOpen(String),
    /// The file is a database, but not a tidings event log.
    #[error("{0} is not a tidings event log")]
    NotOurs(String),
    /// The file was written by a newer build.
    #[error("event log format {found} is newer than this build supports ({supported})")]
    NewerFormat {
        /// Version in the file.
        found: u32,
        /// Highest version this build reads.
        supported: u32,
    },
    /// The file's pages do not match their checksums: it was damaged after it was written.
    /// Nothing is read from it (and it is never reset).
    #[error("{0} is damaged: its pages do not match their checksums")]
    Damaged(String),
    /// A stored record does not decode: the file was damaged or written by a bug.
    #[error("corrupt record in table {table}: {detail}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// [`crate::EventLog::compact`] needs the only handle on the database, and a
    /// [`crate::log::LogReader`] still holds one.
    #[error("cannot compact the log while a reader holds it")]
    CompactionBusy,
}

macro_rules! storage_from {
    ($($t:ty),*) => {$(
        impl From<$t> for LogError {
            fn from(e: $t) -> Self {
                LogError::Storage(e.into())
            }
        }
    )*};
}
storage_from!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CompactionError
);

pub(super) fn corrupt(table: &'static str, detail: impl ToString) -> LogError {
    LogError::Corrupt {
        table,
        detail: detail.to_string(),
    }
}

impl From<DecodeError> for LogError {
    fn from(e: DecodeError) -> Self {
        corrupt("events", e)
    }
}

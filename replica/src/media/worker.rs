//! The upload worker: drains the persistent queue whenever the driver has an authenticated
//! connection, one job at a time, each on its own blob stream.

use super::transfer::BlobStream;
use super::{JobKind, MediaDirection, MediaError, MediaShared, UploadJob};
use crate::Update;
use std::fs::File;
use std::sync::Arc;
use std::time::Duration;
use tidings_engine::media::wire::BlobRefusal;

/// Pause after a transfer failed for a reason that may pass (the connection broke, the
/// source of a forward is still uploading) before the queue is tried again.
pub const RETRY_PAUSE: Duration = Duration::from_millis(500);

pub(super) async fn run(shared: Arc<MediaShared>) {
    let mut link = shared.link.clone();
    loop {
        let conn = link.borrow_and_update().clone();
        let Some(conn) = conn else {
            // Wait for a connection; the driver is gone when the channel closes.
            if link.changed().await.is_err() {
                return;
            }
            continue;
        };
        match drain(&shared, &conn).await {
            Ok(()) => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    r = link.changed() => if r.is_err() { return },
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "upload paused");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    r = link.changed() => if r.is_err() { return },
                }
            }
        }
    }
}

/// Runs every queued job; stops at the first failure that may pass.
async fn drain(shared: &MediaShared, conn: &quinn::Connection) -> Result<(), MediaError> {
    for job in shared.dir.jobs()? {
        match run_job(shared, conn, &job).await {
            Ok(()) => shared.dir.finish(&job)?,
            Err(e) if is_final(&e) => {
                tracing::warn!(blob = %job.blob, error = %e, "upload given up");
                shared.dir.finish(&job)?;
                if let Some(tx) = shared.updates.upgrade() {
                    let _ = tx.send(Update::MediaFailed {
                        conversation: job.conversation,
                        blob: job.blob,
                        reason: e.to_string(),
                    });
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn run_job(
    shared: &MediaShared,
    conn: &quinn::Connection,
    job: &UploadJob,
) -> Result<(), MediaError> {
    let mut stream = BlobStream::open(conn).await?;
    match &job.kind {
        JobKind::Upload => {
            let verified = stream
                .begin(job.conversation, job.blob, job.cipher_len)
                .await?;
            if verified < job.cipher_len {
                let data = File::open(shared.dir.cipher_path(job.blob))?;
                let outboard = File::open(shared.dir.outboard_path(job.blob))?;
                let progress =
                    |done| shared.progress(job.blob, MediaDirection::Upload, done, job.cipher_len);
                stream
                    .upload_from(
                        job.blob,
                        job.cipher_len,
                        (&data, &outboard),
                        verified,
                        progress,
                    )
                    .await?;
            } else {
                shared.progress(job.blob, MediaDirection::Upload, verified, job.cipher_len);
            }
        }
        JobKind::Attach { from } => {
            stream.attach(job.blob, *from, job.conversation).await?;
        }
    }
    stream.finish();
    Ok(())
}

/// Whether retrying cannot help: the relay refused for good, or the local files are gone.
fn is_final(e: &MediaError) -> bool {
    match e {
        MediaError::Refused(r) => !matches!(
            r,
            BlobRefusal::Incomplete { .. } | BlobRefusal::OutOfOrder { .. } | BlobRefusal::Other(_)
        ),
        MediaError::Io(e) => e.kind() == std::io::ErrorKind::NotFound,
        MediaError::Engine(_) | MediaError::Corrupt { .. } | MediaError::TooLarge { .. } => true,
        _ => false,
    }
}

//! The device's own media files: blobs sealed for upload and the persistent upload queue.
//!
//! Layout under `<data dir>/media/`:
//! - `<root>.enc`: the blob's ciphertext, sealed segment by segment from the app's file or
//!   bytes (never the whole file in memory);
//! - `<root>.obao`: its hash tree (bao outboard), to send any piece with its proof;
//! - `queue/<root>-<conversation>.job`: one upload still to finish ([`UploadJob`]), written
//!   (tmp, fsync, rename) before the message that references the blob is sent, removed when
//!   the relay holds the whole blob. The queue survives crashes and restarts; an upload
//!   resumes from the offset the relay reports, not from zero.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tidings_engine::media::{self, BlobKey, BlobSealer, BlobTree, SEGMENT_LEN};
use tidings_engine::{BlobId, ConversationId};

/// Version byte of a job file.
const JOB_V1: u8 = 1;
/// Largest job file read.
const MAX_JOB_LEN: u64 = 4096;

/// Where the app's media comes from.
#[derive(Clone, Debug)]
pub enum MediaSource {
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A file, read segment by segment.
    File(PathBuf),
}

/// What an upload job does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Send the blob's bytes (from where the relay stands).
    Upload,
    /// Reference a blob the relay holds for `from` from the job's conversation too: a forward,
    /// no bytes sent.
    Attach {
        /// A conversation that references it already.
        from: ConversationId,
    },
}

/// One upload (or forward) still to finish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadJob {
    /// The conversation whose message references the blob.
    pub conversation: ConversationId,
    /// The blob.
    pub blob: BlobId,
    /// Ciphertext bytes.
    pub cipher_len: u64,
    /// What to do.
    pub kind: JobKind,
}

/// The media directory of one replica.
#[derive(Clone, Debug)]
pub struct MediaDir {
    root: PathBuf,
}

impl MediaDir {
    /// The media directory under a replica's data directory (created if needed).
    pub fn open(data_dir: &Path) -> std::io::Result<MediaDir> {
        let root = data_dir.join("media");
        fs::create_dir_all(root.join("queue"))?;
        Ok(MediaDir { root })
    }

    /// The ciphertext file of a blob.
    pub fn cipher_path(&self, blob: BlobId) -> PathBuf {
        self.root.join(format!("{}.enc", hex::encode(blob.0)))
    }

    /// The outboard file of a blob.
    pub fn outboard_path(&self, blob: BlobId) -> PathBuf {
        self.root.join(format!("{}.obao", hex::encode(blob.0)))
    }

    fn job_path(&self, job: &UploadJob) -> PathBuf {
        self.root.join("queue").join(format!(
            "{}-{}.job",
            hex::encode(job.blob.0),
            hex::encode(job.conversation.0)
        ))
    }

    /// A scratch file for a transfer under way.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.root.join(format!("{name}.part"))
    }

    /// Seals `source` under `key` into the blob's files; returns the tree (root, length).
    /// Memory stays at one segment and the outboard, whatever the size.
    pub fn seal(
        &self,
        source: &MediaSource,
        key: &BlobKey,
        plain_len: u64,
    ) -> Result<BlobTree, crate::ReplicaError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| crate::ReplicaError::Io { path, source }
        };
        let tmp = self
            .root
            .join(format!("sealing-{}.tmp", hex::encode(&key.as_bytes()[..8])));
        let sealer = BlobSealer::new(key, plain_len).map_err(crate::media::MediaError::from)?;
        {
            let mut out = std::io::BufWriter::new(File::create(&tmp).map_err(io(&tmp))?);
            let mut input: Box<dyn Read> = match source {
                MediaSource::Bytes(b) => Box::new(&b[..]),
                MediaSource::File(p) => Box::new(File::open(p).map_err(io(p))?),
            };
            let mut buf = vec![0u8; SEGMENT_LEN as usize];
            for index in 0..sealer.n_segments() {
                let len = sealer
                    .segment_len(index)
                    .map_err(crate::media::MediaError::from)? as usize;
                input.read_exact(&mut buf[..len]).map_err(io(&tmp))?;
                let sealed = sealer
                    .seal_segment(index, &buf[..len])
                    .map_err(crate::media::MediaError::from)?;
                out.write_all(&sealed).map_err(io(&tmp))?;
            }
            out.into_inner()
                .map_err(|e| io(&tmp)(e.into_error()))?
                .sync_all()
                .map_err(io(&tmp))?;
        }
        let cipher_len = media::cipher_len(plain_len);
        let reader = std::io::BufReader::new(File::open(&tmp).map_err(io(&tmp))?);
        let tree = BlobTree::hash(reader, cipher_len).map_err(crate::media::MediaError::from)?;
        let obao = self.outboard_path(tree.root());
        write_synced(&obao, tree.outboard()).map_err(io(&obao))?;
        let enc = self.cipher_path(tree.root());
        fs::rename(&tmp, &enc).map_err(io(&enc))?;
        Ok(tree)
    }

    /// Queues a job durably.
    pub fn push(&self, job: &UploadJob) -> std::io::Result<()> {
        let mut bytes = vec![JOB_V1];
        postcard::to_io(job, &mut bytes)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let path = self.job_path(job);
        let tmp = path.with_extension("tmp");
        write_synced(&tmp, &bytes)?;
        fs::rename(&tmp, &path)?;
        File::open(self.root.join("queue"))?.sync_all()
    }

    /// Every queued job, in file-name order. A job file that does not read is dropped (it
    /// was cut by a crash before its rename, or damaged) with a warning.
    pub fn jobs(&self) -> std::io::Result<Vec<UploadJob>> {
        let mut paths: Vec<PathBuf> = fs::read_dir(self.root.join("queue"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("job"))
            .collect();
        paths.sort();
        let mut out = Vec::new();
        for p in paths {
            match read_job(&p) {
                Some(job) => out.push(job),
                None => {
                    tracing::warn!(path = %p.display(), "unreadable upload job dropped");
                    fs::remove_file(&p)?;
                }
            }
        }
        Ok(out)
    }

    /// Removes a finished job (and, for an upload, the blob's local files once no other job
    /// needs them).
    pub fn finish(&self, job: &UploadJob) -> std::io::Result<()> {
        fs::remove_file(self.job_path(job))?;
        let still_needed = self
            .jobs()?
            .iter()
            .any(|j| j.blob == job.blob && j.kind == JobKind::Upload);
        if job.kind == JobKind::Upload && !still_needed {
            for p in [self.cipher_path(job.blob), self.outboard_path(job.blob)] {
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

fn read_job(path: &Path) -> Option<UploadJob> {
    if fs::metadata(path).ok()?.len() > MAX_JOB_LEN {
        return None;
    }
    let bytes = fs::read(path).ok()?;
    match bytes.split_first() {
        Some((&JOB_V1, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

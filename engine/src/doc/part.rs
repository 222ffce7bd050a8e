//! One bounded automerge document of a conversation: the head, or a segment of sequences.

use super::DocError;
use crate::conversation::Conversation;
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ReadDoc, ScalarValue, ScalarValueRef, Value, ValueRef, ROOT};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Which document of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PartId {
    /// What is not sequenced yet, membership and receipt watermarks.
    Head,
    /// The messages and places of sequences `k * SEGMENT_SEQS .. (k + 1) * SEGMENT_SEQS`.
    Segment(u64),
}

impl PartId {
    /// The number the log's snapshot table keys this part by (the head is `u64::MAX`).
    pub fn to_u64(self) -> u64 {
        match self {
            PartId::Head => u64::MAX,
            PartId::Segment(k) => k,
        }
    }

    /// The inverse of [`PartId::to_u64`].
    pub fn from_u64(n: u64) -> PartId {
        if n == u64::MAX {
            PartId::Head
        } else {
            PartId::Segment(n)
        }
    }
}

/// One automerge document with what was written to it since its last commit and save.
#[derive(Debug)]
pub(super) struct Part {
    pub doc: AutoCommit,
    /// Operations since the last commit.
    pub uncommitted: usize,
    /// Changed since the last save.
    pub dirty: bool,
    /// Operations written since the document was made or loaded (its keys, when loaded).
    pub ops: u64,
}

impl Part {
    pub fn new(actor: ActorId) -> Part {
        Part {
            doc: AutoCommit::new().with_actor(actor),
            uncommitted: 0,
            dirty: false,
            ops: 0,
        }
    }

    /// Loads saved bytes: an error (never a panic) when automerge refuses them.
    pub fn load(bytes: &[u8], actor: ActorId) -> Result<Part, DocError> {
        let doc = catch_unwind(|| AutoCommit::load(bytes))
            .map_err(|_| DocError::Panicked)?
            .map_err(|e| DocError::Load(e.to_string()))?
            .with_actor(actor);
        let ops = catch_unwind(AssertUnwindSafe(|| doc.length(ROOT)))
            .map_err(|_| DocError::Panicked)? as u64;
        Ok(Part {
            doc,
            uncommitted: 0,
            dirty: false,
            ops,
        })
    }

    pub fn put(&mut self, key: String, bytes: Vec<u8>) -> Result<(), DocError> {
        self.doc
            .put(ROOT, key, ScalarValue::Bytes(bytes))
            .map_err(|e| DocError::Op(e.to_string()))?;
        self.uncommitted += 1;
        self.ops += 1;
        self.dirty = true;
        Ok(())
    }

    /// One automerge change for everything written since the last commit.
    pub fn commit(&mut self) {
        if self.uncommitted > 0 {
            self.doc.commit();
            self.uncommitted = 0;
        }
    }

    pub fn save(&mut self) -> Vec<u8> {
        self.commit();
        self.dirty = false;
        self.doc.save()
    }

    pub fn merge(&mut self, other: &mut Part) -> Result<(), DocError> {
        self.commit();
        other.commit();
        self.doc
            .merge(&mut other.doc)
            .map_err(|e| DocError::Op(e.to_string()))?;
        self.dirty = true;
        Ok(())
    }

    /// Joins every value of every key into `state` with `apply` (`None`: not our value).
    ///
    /// One pass over the root map. Only a key holding concurrent values (`conflict`) is looked
    /// up again with `get_all`, so that all of them are joined rather than automerge's winner
    /// alone; a `get_all` per key made loading a large document several times slower.
    pub fn read_into(
        &self,
        state: &mut Conversation,
        apply: fn(&mut Conversation, &str, &[u8]) -> Option<()>,
    ) -> Result<(), DocError> {
        catch_unwind(AssertUnwindSafe(|| self.read_unguarded(state, apply)))
            .map_err(|_| DocError::Panicked)?
    }

    fn read_unguarded(
        &self,
        state: &mut Conversation,
        apply: fn(&mut Conversation, &str, &[u8]) -> Option<()>,
    ) -> Result<(), DocError> {
        for item in self.doc.map_range(ROOT, ..) {
            let key: &str = &item.key;
            let bad = || DocError::BadValue {
                key: key.to_owned(),
            };
            if item.conflict {
                let values = self
                    .doc
                    .get_all(ROOT, key)
                    .map_err(|e| DocError::Op(e.to_string()))?;
                for (value, _) in values {
                    let Value::Scalar(scalar) = value else {
                        return Err(bad());
                    };
                    let ScalarValue::Bytes(bytes) = scalar.as_ref() else {
                        return Err(bad());
                    };
                    apply(state, key, bytes).ok_or_else(bad)?;
                }
            } else {
                let ValueRef::Scalar(ScalarValueRef::Bytes(bytes)) = &item.value else {
                    return Err(bad());
                };
                apply(state, key, bytes).ok_or_else(bad)?;
            }
        }
        Ok(())
    }
}

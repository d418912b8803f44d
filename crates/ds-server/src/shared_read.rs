//! One store read for every live reader waiting at the same position.
//!
//! When an append lands on a stream with N live readers (SSE or long-poll) parked at its old
//! tail, all N wake at once and each would read the same new records from the store: N
//! `pread`s of the same bytes in the file backend, N lock-and-copy rounds in the others. Here
//! the first reader at a (stream incarnation, position) does the read and the readers that come
//! for the same position within [`FRESH_FOR`] share its result, waiting for it if it is still
//! in flight.
//!
//! A shared result can be up to [`FRESH_FOR`] old: a reader may get the records up to the tail
//! as it was then, and reads on from there at once. Records never change once written, and the
//! key carries the stream's incarnation, so a stream deleted and created again under the same
//! name is never mixed up with its predecessor. Entries older than [`FRESH_FOR`] are dropped at
//! most once per [`FRESH_FOR`], so the map holds only the positions read in the last moments.
//!
//! A shared read also carries the one encoded SSE frame of its records (see
//! [`SharedChunk::frame`]): the subscribers woken by one append send the same `Bytes`, encoded
//! once, instead of each encoding its own copy.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ds_protocol::{Offset, StreamName};
use ds_storage::{ReadChunk, ReadFrom, Storage};
use tokio::sync::OnceCell;

/// How long a read's result serves later readers at the same position.
const FRESH_FOR: Duration = Duration::from_millis(250);

/// A read shared by the readers at one position: `None` when the read failed or found another
/// incarnation of the stream (each reader then ends, as after its own failed read).
type Cell = Arc<OnceCell<Option<Arc<SharedChunk>>>>;

/// A read result shared by live readers, with the frame encoded for them once.
#[derive(Debug)]
pub(crate) struct SharedChunk {
    chunk: ReadChunk,
    /// The encoded frame and the key (an SSE cursor) it was encoded for.
    frame: OnceLock<(Option<u64>, Bytes)>,
}

impl SharedChunk {
    /// Wraps a read result.
    pub(crate) fn new(chunk: ReadChunk) -> Self {
        SharedChunk {
            chunk,
            frame: OnceLock::new(),
        }
    }

    /// The frame of this chunk for `key`: the one encoded by the first caller when it used the
    /// same key (a shared `Bytes`, no copy), otherwise `encode()`'s own.
    ///
    /// The frame must be a function of the chunk and `key` alone. The first key asked for is
    /// the one kept: every subscriber without a cursor of its own sends the current cursor
    /// interval, so they all share it; a client whose cursor is ahead gets its own frame.
    pub(crate) fn frame(&self, key: Option<u64>, encode: impl FnOnce() -> Bytes) -> Bytes {
        if let Some((k, frame)) = self.frame.get() {
            return if *k == key { frame.clone() } else { encode() };
        }
        let mut encode = Some(encode);
        let (k, frame) = self.frame.get_or_init(|| {
            let encode = encode.take().expect("get_or_init runs its closure once");
            (key, encode())
        });
        match encode {
            // Another caller's frame went in first, for another key.
            Some(encode) if *k != key => encode(),
            _ => frame.clone(),
        }
    }
}

impl Deref for SharedChunk {
    type Target = ReadChunk;

    fn deref(&self) -> &ReadChunk {
        &self.chunk
    }
}

/// Where a live reader reads next: the stream incarnation (its `stream_id`) and the position.
type Key = (StreamName, u64, Offset);

/// Recent reads, by position.
#[derive(Debug)]
pub(crate) struct SharedReads {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    reads: HashMap<Key, (Cell, Instant)>,
    swept: Instant,
}

impl Default for SharedReads {
    fn default() -> Self {
        SharedReads {
            inner: Mutex::new(Inner {
                reads: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }
}

impl SharedReads {
    /// Reads at most about `max_bytes` of stream `name` (incarnation `stream_id`) from `pos`,
    /// sharing the read with every other caller at the same position.
    ///
    /// `None` when the read failed or the name now holds another incarnation (the stream was
    /// deleted and created again): the caller's stream is gone either way.
    pub(crate) async fn read<S: Storage>(
        &self,
        storage: &S,
        name: &StreamName,
        stream_id: u64,
        pos: Offset,
        max_bytes: usize,
    ) -> Option<Arc<SharedChunk>> {
        let cell = {
            let now = Instant::now();
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            if now.duration_since(inner.swept) >= FRESH_FOR {
                inner
                    .reads
                    .retain(|_, (_, at)| now.duration_since(*at) < FRESH_FOR);
                inner.swept = now;
            }
            let entry = inner
                .reads
                .entry((name.clone(), stream_id, pos))
                .or_insert_with(|| (Cell::default(), now));
            if now.duration_since(entry.1) >= FRESH_FOR {
                *entry = (Cell::default(), now);
            }
            Arc::clone(&entry.0)
        };
        // The store read is boxed, and only by the one caller that runs it: every caller's
        // future stays small (an SSE response holds this one in its body for its whole life),
        // and the callers that share the result allocate nothing.
        let chunk = cell
            .get_or_init(|| {
                Box::pin(async move {
                    match storage.read(name, ReadFrom::At(pos), max_bytes).await {
                        Ok(chunk) if chunk.stream_id == stream_id => {
                            Some(Arc::new(SharedChunk::new(chunk)))
                        }
                        _ => None,
                    }
                })
            })
            .await
            .clone();
        // "Nothing yet" is only true at the instant of the read: readers that come later were
        // woken because the tail moved, and must read again, not be told the same.
        if chunk.as_ref().is_some_and(|c| c.is_empty() && !c.closed) {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            let key = (name.clone(), stream_id, pos);
            if inner
                .reads
                .get(&key)
                .is_some_and(|(c, _)| Arc::ptr_eq(c, &cell))
            {
                inner.reads.remove(&key);
            }
        }
        chunk
    }

    /// Positions remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reads
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ds_protocol::NameLimits;
    use ds_storage::{AppendRequest, CreateRequest};
    use ds_storage_memory::MemoryStorage;

    fn name(s: &str) -> StreamName {
        StreamName::parse(s, NameLimits::default()).expect("valid name")
    }

    async fn store_with(name: &StreamName, body: &'static str) -> (MemoryStorage, u64) {
        let store = MemoryStorage::default();
        let created = store
            .create(
                name,
                CreateRequest {
                    content_type: Some("text/plain".to_owned()),
                    ..CreateRequest::default()
                },
            )
            .await
            .expect("create");
        store
            .append(
                name,
                AppendRequest {
                    content_type: Some("text/plain".to_owned()),
                    body: Bytes::from_static(body.as_bytes()),
                    ..AppendRequest::default()
                },
            )
            .await
            .expect("append");
        (store, created.info().stream_id)
    }

    #[tokio::test]
    async fn readers_at_one_position_share_one_read_until_it_is_stale() {
        let s = name("s");
        let (store, id) = store_with(&s, "hello").await;
        let shared = SharedReads::default();
        let reads: Vec<_> = (0..50)
            .map(|_| shared.read(&store, &s, id, Offset::ZERO, 1024))
            .collect();
        let chunks = futures_util::future::join_all(reads).await;
        let first = chunks[0].clone().expect("read");
        assert_eq!(first.pieces.concat(), b"hello");
        assert!(
            chunks
                .iter()
                .all(|c| c.as_ref().is_some_and(|c| Arc::ptr_eq(c, &first))),
            "every reader got the one shared read"
        );
        assert_eq!(shared.len(), 1);
        // Once the result is no longer fresh, a read at the same position reads again (and
        // sees newer data); the stale entry is dropped.
        tokio::time::sleep(FRESH_FOR).await;
        store
            .append(
                &s,
                AppendRequest {
                    content_type: Some("text/plain".to_owned()),
                    body: Bytes::from_static(b" world"),
                    ..AppendRequest::default()
                },
            )
            .await
            .expect("append");
        let again = shared
            .read(&store, &s, id, Offset::ZERO, 1024)
            .await
            .expect("read");
        assert_eq!(again.pieces.concat(), b"hello world");
        assert_eq!(
            shared.len(),
            1,
            "the stale entry was replaced, not kept beside"
        );
    }

    #[test]
    fn a_frame_is_encoded_once_per_key_and_shared() {
        let chunk = SharedChunk::new(ReadChunk {
            stream_id: 1,
            content_type: "text/plain".to_owned(),
            start: Offset::ZERO,
            next: Offset::new(1, 5),
            pieces: vec![Bytes::from_static(b"hello")],
            up_to_date: true,
            closed: false,
        });
        let mut encoded = 0;
        let mut encode = |text: &'static str| {
            encoded += 1;
            Bytes::copy_from_slice(text.as_bytes())
        };
        let first = chunk.frame(Some(7), || encode("cursor 7"));
        let again = chunk.frame(Some(7), || encode("not used"));
        assert_eq!(again, first);
        assert_eq!(
            again.as_ptr(),
            first.as_ptr(),
            "the same key gets the same bytes, not a copy"
        );
        let other = chunk.frame(Some(8), || encode("cursor 8"));
        assert_eq!(other, "cursor 8", "another key gets its own frame");
        assert_eq!(chunk.frame(Some(7), || encode("not used")), "cursor 7");
        assert_eq!(encoded, 2, "one encoding per distinct key asked for");
    }

    #[tokio::test]
    async fn an_empty_read_is_not_kept() {
        let s = name("s");
        let (store, id) = store_with(&s, "abc").await;
        let shared = SharedReads::default();
        let tail = shared
            .read(&store, &s, id, Offset::ZERO, 1024)
            .await
            .expect("read")
            .next;
        let empty = shared.read(&store, &s, id, tail, 1024).await.expect("read");
        assert!(empty.is_empty() && empty.up_to_date);
        store
            .append(
                &s,
                AppendRequest {
                    content_type: Some("text/plain".to_owned()),
                    body: Bytes::from_static(b"def"),
                    ..AppendRequest::default()
                },
            )
            .await
            .expect("append");
        // A reader woken by that append reads again at once instead of being told "nothing".
        let fresh = shared.read(&store, &s, id, tail, 1024).await.expect("read");
        assert_eq!(fresh.pieces.concat(), b"def");
    }

    #[tokio::test]
    async fn old_positions_are_forgotten() {
        let s = name("s");
        let (store, id) = store_with(&s, "0123456789").await;
        let shared = SharedReads::default();
        for byte in 0..10 {
            let chunk = shared
                .read(&store, &s, id, Offset::new(1, byte), 1024)
                .await;
            // Positions inside a record are not offsets the server minted; what matters here
            // is that each distinct position is remembered, then forgotten.
            let _ = chunk;
        }
        assert_eq!(shared.len(), 10);
        tokio::time::sleep(FRESH_FOR).await;
        let _ = shared.read(&store, &s, id, Offset::ZERO, 1024).await;
        assert_eq!(shared.len(), 1, "stale positions were dropped");
    }

    #[tokio::test]
    async fn another_incarnation_or_a_missing_stream_ends_the_reader() {
        let s = name("s");
        let (store, id) = store_with(&s, "old").await;
        let shared = SharedReads::default();
        store.delete(&s).await.expect("delete");
        assert!(
            shared
                .read(&store, &s, id, Offset::ZERO, 1024)
                .await
                .is_none()
        );
        store
            .create(&s, CreateRequest::default())
            .await
            .expect("create again");
        assert!(
            shared
                .read(&store, &s, id, Offset::ZERO, 1024)
                .await
                .is_none(),
            "a reader of the old incarnation never sees the new one's data"
        );
    }
}

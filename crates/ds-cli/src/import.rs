//! `import`: re-creates the streams of a transfer file ([`crate::transfer`]) in a store.
//!
//! Each stream is created (as a fork of its already imported source when it was one), its
//! records are appended so offsets advance exactly as on the source (one append per record of
//! a byte stream; JSON messages in arrays of up to 1 MiB, as JSON offsets count messages), its
//! tail is checked against the export's, and its writer state (producers, `Stream-Seq`,
//! closure) is restored with [`Storage::restore_writer`]. Any failure deletes every stream this import
//! created, newest first, so the target is left as it was (streams replaced with
//! [`OnConflict::Replace`] before the failure are not brought back).
//!
//! [`verify`] reads a whole file without writing anything; the `import` command runs it first
//! on a file, so a truncated or corrupted file is refused before the target is touched.

use std::fmt::Write as _;
use std::io::Read;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use ds_protocol::{Expiry, NameLimits, Offset, StreamName};
use ds_storage::rules::{ProducerState, WriterState};
use ds_storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, ForkRequest, Storage,
};

use crate::progress::Progress;
use crate::transfer::{self, Event, Reader, StreamMeta};

/// What to do with a stream that already exists in the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnConflict {
    /// Refuse the import before writing anything (the default).
    #[default]
    Fail,
    /// Keep the existing stream; its section in the file is read and checked but not imported.
    Skip,
    /// Delete the existing stream and import the file's.
    Replace,
}

/// How to import.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// What to do with streams that already exist.
    pub on_conflict: OnConflict,
    /// Name limits of the target (a longer name in the file is refused).
    pub name_limits: NameLimits,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Streams created.
    pub imported: u64,
    /// Existing streams kept ([`OnConflict::Skip`]).
    pub skipped: u64,
    /// Existing streams deleted and imported again ([`OnConflict::Replace`]).
    pub replaced: u64,
    /// Streams whose absolute expiry had passed, not imported.
    pub expired: u64,
    /// Records appended.
    pub records: u64,
    /// Payload bytes appended.
    pub bytes: u64,
}

/// Reads a whole transfer file, checking every frame, checksum and count, without writing
/// anything. Returns the names of its streams, in file order.
pub fn verify<R: Read>(input: R, progress: &mut Progress) -> Result<Vec<String>, transfer::Error> {
    let mut reader = Reader::new(input)?;
    let mut names = Vec::new();
    while let Some(event) = reader.next_event()? {
        if let Event::Stream(meta) = event {
            names.push(meta.name);
        }
        progress.position(reader.position());
    }
    Ok(names)
}

/// Fails, naming the first one, if any of `names` already exists in `store` (for
/// [`OnConflict::Fail`], before anything is written).
pub async fn check_conflicts<S: Storage>(
    store: &S,
    names: &[String],
    limits: NameLimits,
) -> anyhow::Result<()> {
    for raw in names {
        let name = stream_name(raw, limits)?;
        if exists(store, &name).await? {
            bail!(
                "stream `{name}` already exists in the target; nothing was imported (use \
                 --on-conflict skip to keep existing streams or replace to overwrite them)"
            );
        }
    }
    Ok(())
}

/// Imports the transfer file `input` into `store`. On failure every stream this import created
/// is deleted again before the error is returned.
pub async fn import<S: Storage, R: Read>(
    store: &S,
    input: R,
    opts: &ImportOptions,
    progress: &mut Progress,
) -> anyhow::Result<ImportSummary> {
    let mut created = Vec::new();
    let mut summary = ImportSummary::default();
    let result = run(store, input, opts, progress, &mut created, &mut summary).await;
    match result {
        Ok(()) => {
            progress.finish();
            Ok(summary)
        }
        Err(e) => {
            let mut e = e;
            for name in created.iter().rev() {
                match store.delete(name).await {
                    Ok(()) | Err(ds_storage::Error::NotFound) => {}
                    Err(del) => {
                        e = e.context(format!(
                            "rolling back: could not delete the partly imported stream \
                             `{name}`: {del}"
                        ));
                    }
                }
            }
            progress.finish();
            Err(e.context(if created.is_empty() {
                "import failed; nothing was imported".to_owned()
            } else {
                format!(
                    "import failed; the {} stream(s) it had created were removed again",
                    created.len()
                )
            }))
        }
    }
}

/// The stream section being imported.
struct Current {
    name: StreamName,
    meta: StreamMeta,
    json: bool,
    content_type: String,
    /// `false` while skipping an existing stream's section.
    writing: bool,
    /// JSON messages not appended yet, as the body of one append (`[m1,m2,...`), and the file
    /// position of the first one's frame.
    batch: Option<(Vec<u8>, u64)>,
}

/// A JSON batch is appended once it holds this many bytes.
const JSON_BATCH_BYTES: usize = 1024 * 1024;

async fn run<S: Storage, R: Read>(
    store: &S,
    input: R,
    opts: &ImportOptions,
    progress: &mut Progress,
    created: &mut Vec<StreamName>,
    summary: &mut ImportSummary,
) -> anyhow::Result<()> {
    let mut reader = Reader::new(input)?;
    let mut current: Option<Current> = None;
    loop {
        // Where the frame being applied starts, for errors the store reports.
        let at = reader.position();
        let Some(event) = reader.next_event()? else {
            break;
        };
        match event {
            Event::Stream(meta) => {
                current = Some(
                    begin(store, meta, opts, created, summary)
                        .await
                        .with_context(|| format!("the STREAM frame at byte {at}"))?,
                );
            }
            Event::Data(record) => {
                let cur = current.as_mut().context("DATA outside a stream section")?;
                if cur.writing {
                    summary.records += 1;
                    summary.bytes += record.len() as u64;
                    data(store, cur, record, at).await?;
                }
            }
            Event::EndStream(end) => {
                let mut cur = current
                    .take()
                    .context("END_STREAM outside a stream section")?;
                if cur.writing {
                    flush(store, &mut cur).await?;
                    finish(store, &cur, &end.next_offset)
                        .await
                        .with_context(|| {
                            format!("stream `{}`, the END_STREAM frame at byte {at}", cur.name)
                        })?;
                }
                progress.stream_done();
            }
        }
        progress.position(reader.position());
    }
    Ok(())
}

/// Handles a STREAM frame: resolves a conflict and creates the stream.
async fn begin<S: Storage>(
    store: &S,
    meta: StreamMeta,
    opts: &ImportOptions,
    created: &mut Vec<StreamName>,
    summary: &mut ImportSummary,
) -> anyhow::Result<Current> {
    let name = stream_name(&meta.name, opts.name_limits)?;
    let json = ds_protocol::content_type::is_json(&meta.content_type);
    let mut current = Current {
        name: name.clone(),
        content_type: meta.content_type.clone(),
        meta,
        json,
        writing: false,
        batch: None,
    };
    let expiry = expiry(&current.meta).with_context(|| format!("stream `{name}`"))?;
    if let Expiry::ExpiresAt(at) = expiry
        && at <= time::OffsetDateTime::now_utc()
    {
        summary.expired += 1;
        return Ok(current);
    }
    if exists(store, &name).await? {
        match opts.on_conflict {
            OnConflict::Fail => bail!(
                "stream `{name}` already exists in the target (use --on-conflict skip or \
                 replace)"
            ),
            OnConflict::Skip => {
                summary.skipped += 1;
                return Ok(current);
            }
            OnConflict::Replace => {
                store.delete(&name).await.map_err(|e| {
                    anyhow::anyhow!(e).context(format!("cannot replace stream `{name}`"))
                })?;
                summary.replaced += 1;
            }
        }
    }
    let fork = match &current.meta.forked_from {
        Some(f) => Some(ForkRequest {
            source: stream_name(&f.source, opts.name_limits)?,
            offset: Some(
                f.offset
                    .parse::<Offset>()
                    .map_err(|e| anyhow::anyhow!("stream `{name}`: bad fork offset: {e}"))?,
            ),
            sub_offset: f.sub_offset,
        }),
        None => None,
    };
    let req = CreateRequest {
        content_type: Some(current.content_type.clone()),
        expiry,
        closed: false,
        body: Bytes::new(),
        fork,
    };
    match store.create(&name, req).await {
        Ok(CreateOutcome::Created(_)) => {}
        Ok(CreateOutcome::Existed(_)) => bail!("stream `{name}` appeared during the import"),
        Err(e) => return Err(anyhow::anyhow!(e).context(format!("cannot create stream `{name}`"))),
    }
    created.push(name);
    summary.imported += 1;
    current.writing = true;
    Ok(current)
}

/// Applies one DATA record: a byte stream's record is one append (offsets count appends); a JSON
/// message joins the pending batch, appended as one array when it is large enough (offsets
/// count messages, so batching changes none of them and saves a commit per message).
async fn data<S: Storage>(
    store: &S,
    cur: &mut Current,
    record: Vec<u8>,
    at: u64,
) -> anyhow::Result<()> {
    if !cur.json {
        return append(store, cur, Bytes::from(record))
            .await
            .with_context(|| format!("stream `{}`, the DATA frame at byte {at}", cur.name));
    }
    let (batch, _) = cur.batch.get_or_insert_with(|| (vec![b'['], at));
    if batch.len() > 1 {
        batch.push(b',');
    }
    batch.extend_from_slice(&record);
    if batch.len() >= JSON_BATCH_BYTES {
        flush(store, cur).await?;
    }
    Ok(())
}

/// Appends the pending JSON batch, if any.
async fn flush<S: Storage>(store: &S, cur: &mut Current) -> anyhow::Result<()> {
    let Some((mut batch, at)) = cur.batch.take() else {
        return Ok(());
    };
    batch.push(b']');
    append(store, cur, Bytes::from(batch))
        .await
        .with_context(|| {
            format!(
                "stream `{}`, the JSON messages from the DATA frame at byte {at}",
                cur.name
            )
        })
}

/// Appends `body` as one append.
async fn append<S: Storage>(store: &S, cur: &Current, body: Bytes) -> anyhow::Result<()> {
    let req = AppendRequest {
        content_type: Some(cur.content_type.clone()),
        body,
        ..AppendRequest::default()
    };
    match store.append(&cur.name, req).await {
        Ok(AppendOutcome::Appended { .. }) => Ok(()),
        Ok(other) => bail!("append was not applied: {other:?}"),
        Err(e) => Err(anyhow::anyhow!(e).context("append failed")),
    }
}

/// Checks the imported stream's tail against the export's and restores its writer state.
async fn finish<S: Storage>(store: &S, cur: &Current, next_offset: &str) -> anyhow::Result<()> {
    let info = store
        .head(&cur.name)
        .await
        .map_err(|e| anyhow::anyhow!(e).context("HEAD after import failed"))?;
    if info.next.to_string() != next_offset {
        bail!(
            "the imported stream ends at {}, the export says {next_offset}",
            info.next
        );
    }
    let meta = &cur.meta;
    let writer = WriterState {
        closed: meta.closed,
        closed_by: meta
            .closed_by
            .as_ref()
            .map(|p| (p.id.clone(), p.epoch, p.seq)),
        last_stream_seq: meta.stream_seq.clone(),
        producers: meta
            .producers
            .iter()
            .map(|p| {
                (
                    p.id.clone(),
                    ProducerState {
                        epoch: p.epoch,
                        last_seq: p.seq,
                    },
                )
            })
            .collect(),
    };
    if writer != WriterState::default() {
        store
            .restore_writer(&cur.name, writer)
            .await
            .map_err(|e| anyhow::anyhow!(e).context("restoring producer state failed"))?;
    }
    Ok(())
}

/// Whether a stream (live, or soft-deleted but still holding its name) exists at `name`.
async fn exists<S: Storage>(store: &S, name: &StreamName) -> anyhow::Result<bool> {
    match store.head(name).await {
        Ok(_) | Err(ds_storage::Error::Gone) => Ok(true),
        Err(ds_storage::Error::NotFound) => Ok(false),
        Err(e) => Err(anyhow::anyhow!(e).context(format!("cannot look up stream `{name}`"))),
    }
}

/// The stream's expiry as its STREAM frame records it.
fn expiry(meta: &StreamMeta) -> anyhow::Result<Expiry> {
    Ok(match (meta.ttl_secs, &meta.expires_at) {
        (None, None) => Expiry::None,
        (Some(secs), None) => Expiry::Ttl(secs),
        (None, Some(at)) => Expiry::ExpiresAt(
            ds_protocol::headers::parse_expires_at(at)
                .map_err(|e| anyhow::anyhow!("bad expires_at {at:?}: {e}"))?,
        ),
        (Some(_), Some(_)) => bail!("both ttl_secs and expires_at are set"),
    })
}

/// A decoded stream name from a transfer file, validated like a request path.
fn stream_name(raw: &str, limits: NameLimits) -> anyhow::Result<StreamName> {
    // `StreamName::parse` takes the still percent-encoded path; the file holds decoded names.
    let mut encoded = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            encoded.push(char::from(b));
        } else {
            let _ = write!(encoded, "%{b:02X}");
        }
    }
    StreamName::parse(&encoded, limits)
        .map_err(|e| anyhow::anyhow!("stream name {raw:?} in the file is not valid here: {e}"))
}

//! `export`: every stream of a store (or the named ones) into one transfer file
//! ([`crate::transfer`], `docs/transfer-format.md`).
//!
//! Works on any [`Storage`], one stream at a time and one read chunk at a time, so memory stays
//! bounded by [`READ_CHUNK`] plus one stored record whatever the size of the store.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use anyhow::{Context as _, bail};
use ds_protocol::{Expiry, NameLimits, Offset, StreamName};
use ds_storage::{ExportMeta, ReadFrom, Storage};

use crate::progress::Progress;
use crate::transfer::{ForkMeta, ProducerMeta, StreamMeta, Writer};

/// Payload bytes asked for per read.
pub const READ_CHUNK: usize = 1024 * 1024;

/// The internal stream holding the webhook signing key (exported only when asked for).
pub const SIGNING_KEY_STREAM: &str = "__ds/keys/webhook-signing";

/// What to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Only these streams (all live streams when empty). A named fork whose source is not
    /// exported too is written as a plain stream holding its inherited data.
    pub streams: Vec<String>,
    /// Also export the webhook signing key (`__ds/keys/webhook-signing`), so an import target
    /// signs webhooks with the same key. Other internal `__ds/` streams are never exported.
    pub include_signing_key: bool,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Stream sections written.
    pub streams: u64,
    /// DATA records written.
    pub records: u64,
    /// Payload bytes written.
    pub bytes: u64,
}

/// Writes the selected streams of `store` to `out` as a transfer file, sources before their
/// forks, reporting to `progress`. `source_mode` names the store in the file's header.
pub async fn export<S: Storage, W: Write>(
    store: &S,
    out: W,
    source_mode: &str,
    opts: &ExportOptions,
    progress: &mut Progress,
) -> anyhow::Result<(ExportSummary, W)> {
    let metas = select(store, opts).await?;
    let exported: HashSet<&StreamName> = metas.iter().map(|m| &m.info.name).collect();
    progress.begin(metas.len() as u64, metas.iter().map(|m| m.info.bytes).sum());
    let mut writer = Writer::new(out, source_mode).context("cannot write the export")?;
    let mut summary = ExportSummary::default();
    for meta in &metas {
        let keep_fork = meta
            .fork
            .as_ref()
            .is_some_and(|f| exported.contains(&f.source));
        let (records, bytes) = export_stream(store, &mut writer, meta, keep_fork, progress)
            .await
            .with_context(|| format!("cannot export stream `{}`", meta.info.name))?;
        summary.streams += 1;
        summary.records += records;
        summary.bytes += bytes;
        progress.stream_done();
    }
    let out = writer.finish().context("cannot finish the export")?;
    progress.finish();
    Ok((summary, out))
}

/// The streams to export with their metadata, every fork after its source.
async fn select<S: Storage>(store: &S, opts: &ExportOptions) -> anyhow::Result<Vec<ExportMeta>> {
    let names: Vec<StreamName> = if opts.streams.is_empty() {
        let listed = store
            .list()
            .await
            .map_err(|e| anyhow::anyhow!(e).context("cannot list the streams"))?;
        listed
            .into_iter()
            .map(|info| info.name)
            .filter(|n| !n.is_reserved() || (opts.include_signing_key && is_signing_key(n)))
            .collect()
    } else {
        let mut names = Vec::new();
        let mut seen = HashSet::new();
        for raw in &opts.streams {
            let name = StreamName::parse(raw, NameLimits::default())
                .with_context(|| format!("--stream {raw:?} is not a valid stream name"))?;
            if name.is_reserved() && !is_signing_key(&name) {
                bail!("--stream {raw:?}: internal `__ds/` streams are not exported");
            }
            if seen.insert(name.clone()) {
                names.push(name);
            }
        }
        if opts.include_signing_key {
            let key = signing_key_name();
            if seen.insert(key.clone()) {
                names.push(key);
            }
        }
        names
    };
    let mut metas = Vec::with_capacity(names.len());
    for name in names {
        match store.export_meta(&name).await {
            Ok(meta) => metas.push(meta),
            // The key exists only once a subscription signed something; asking for it when
            // there is none exports nothing rather than failing. A listed stream that is gone
            // now expired since the listing.
            Err(ds_storage::Error::NotFound)
                if is_signing_key(&name) || opts.streams.is_empty() => {}
            Err(ds_storage::Error::NotFound) => bail!("there is no stream named `{name}`"),
            Err(e) => {
                return Err(anyhow::anyhow!(e).context(format!("cannot export stream `{name}`")));
            }
        }
    }
    Ok(sources_first(metas))
}

fn signing_key_name() -> StreamName {
    StreamName::parse(SIGNING_KEY_STREAM, NameLimits::default())
        .expect("the signing key stream's name is valid")
}

fn is_signing_key(name: &StreamName) -> bool {
    name.as_str() == SIGNING_KEY_STREAM
}

/// Orders `metas` so that every fork comes after its source (when the source is among them),
/// keeping name order otherwise.
fn sources_first(mut metas: Vec<ExportMeta>) -> Vec<ExportMeta> {
    metas.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    let index: HashMap<StreamName, usize> = metas
        .iter()
        .enumerate()
        .map(|(i, m)| (m.info.name.clone(), i))
        .collect();
    // Depth in the fork chain among the exported streams; chains are acyclic (a fork's source
    // existed before it), and the walk is bounded by the number of streams anyway.
    let depth = |i: usize| {
        let mut d = 0usize;
        let mut at = i;
        while let Some(src) = metas[at].fork.as_ref().and_then(|f| index.get(&f.source)) {
            d += 1;
            at = *src;
            if d > metas.len() {
                break;
            }
        }
        d
    };
    let depths: Vec<usize> = (0..metas.len()).map(depth).collect();
    let mut order: Vec<usize> = (0..metas.len()).collect();
    order.sort_by_key(|&i| depths[i]);
    let mut slots: Vec<Option<ExportMeta>> = metas.into_iter().map(Some).collect();
    order
        .into_iter()
        .map(|i| slots[i].take().expect("each index once"))
        .collect()
}

/// The STREAM frame of `meta`; `fork` is the fork point to record, if the stream is exported as
/// a fork.
fn stream_meta(meta: &ExportMeta, fork: Option<ForkMeta>) -> StreamMeta {
    let info = &meta.info;
    let (ttl_secs, expires_at) = match info.expiry {
        Expiry::None => (None, None),
        Expiry::Ttl(secs) => (Some(secs), None),
        Expiry::ExpiresAt(at) => (None, Some(ds_protocol::headers::format_expires_at(at))),
    };
    let mut producers: Vec<ProducerMeta> = meta
        .writer
        .producers
        .iter()
        .map(|(id, p)| ProducerMeta {
            id: id.clone(),
            epoch: p.epoch,
            seq: p.last_seq,
        })
        .collect();
    producers.sort_by(|a, b| a.id.cmp(&b.id));
    StreamMeta {
        name: info.name.as_str().to_owned(),
        content_type: info.content_type.clone(),
        ttl_secs,
        expires_at,
        closed: meta.writer.closed,
        forked_from: fork,
        producers,
        stream_seq: meta.writer.last_stream_seq.clone(),
        closed_by: meta
            .writer
            .closed_by
            .as_ref()
            .map(|(id, epoch, seq)| ProducerMeta {
                id: id.clone(),
                epoch: *epoch,
                seq: *seq,
            }),
    }
}

/// Writes one stream section. Returns the records and bytes written.
async fn export_stream<S: Storage, W: Write>(
    store: &S,
    writer: &mut Writer<W>,
    meta: &ExportMeta,
    keep_fork: bool,
    progress: &mut Progress,
) -> anyhow::Result<(u64, u64)> {
    let name = &meta.info.name;
    let json = ds_protocol::content_type::is_json(&meta.info.content_type);
    let (fork, from) = match (&meta.fork, keep_fork) {
        (Some(point), true) => {
            let offset = if json && point.sub_offset > 0 {
                // JSON batches are not kept across a transfer (an import batches messages its
                // own way), so a sub-offset into a batch is recorded as the message position it
                // names, which is the same fork point.
                json_position(store, &point.source, point.offset, point.sub_offset).await?
            } else {
                point.offset
            };
            let fork = ForkMeta {
                source: point.source.as_str().to_owned(),
                offset: offset.to_string(),
                sub_offset: if json { 0 } else { point.sub_offset },
            };
            (Some(fork), ReadFrom::At(meta.base))
        }
        // Not a fork, or a fork whose source is not exported: all of its view, from the start.
        _ => (None, ReadFrom::Start),
    };
    writer
        .begin_stream(&stream_meta(meta, fork))
        .context("cannot write the export")?;
    let tail = meta.info.next;
    let (mut records, mut bytes) = (0u64, 0u64);
    // An append cut by the end of a read chunk, completed by the next chunk.
    let mut carry: Vec<u8> = Vec::new();
    let mut from = from;
    loop {
        let chunk = store
            .read(name, from, READ_CHUNK)
            .await
            .map_err(|e| anyhow::anyhow!(e).context("read failed"))?;
        // Every piece but a last one cut by the byte budget is a whole append (or, for JSON,
        // one message): `next.seq - start.seq` of them are complete.
        let complete =
            usize::try_from(chunk.next.seq - chunk.start.seq).context("read chunk too large")?;
        for (i, piece) in chunk.pieces.iter().enumerate() {
            let whole = i < complete;
            if carry.is_empty() && whole {
                writer.data(piece).context("cannot write the export")?;
                records += 1;
                bytes += piece.len() as u64;
            } else {
                carry.extend_from_slice(piece);
                if whole {
                    writer.data(&carry).context("cannot write the export")?;
                    records += 1;
                    bytes += carry.len() as u64;
                    carry.clear();
                }
            }
            progress.bytes(piece.len() as u64);
        }
        if chunk.next >= tail || (chunk.up_to_date && chunk.next == chunk.start) {
            break;
        }
        if chunk.next <= chunk.start {
            bail!("read at {} made no progress", chunk.start);
        }
        from = ReadFrom::At(chunk.next);
    }
    if !carry.is_empty() {
        bail!("the stream's data ends inside an append (at {tail})");
    }
    writer
        .end_stream(&tail.to_string())
        .context("cannot write the export")?;
    Ok((records, bytes))
}

/// The position `count` JSON messages past `anchor` in `source`.
async fn json_position<S: Storage>(
    store: &S,
    source: &StreamName,
    anchor: Offset,
    count: u64,
) -> anyhow::Result<Offset> {
    let mut at = anchor;
    let mut left = count;
    while left > 0 {
        let chunk = store
            .read(source, ReadFrom::At(at), READ_CHUNK)
            .await
            .map_err(|e| {
                anyhow::anyhow!(e).context(format!("cannot read fork source `{source}`"))
            })?;
        if chunk.pieces.is_empty() {
            bail!("fork source `{source}` ends before the fork point");
        }
        for piece in chunk
            .pieces
            .iter()
            .take(usize::try_from(left).unwrap_or(usize::MAX))
        {
            at = Offset::new(at.seq + 1, at.byte + piece.len() as u64);
            left -= 1;
        }
    }
    Ok(at)
}

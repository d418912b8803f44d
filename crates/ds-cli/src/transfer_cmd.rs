//! The `export` and `import` commands: files, standard streams, progress and the data dir of
//! the configured backend around [`crate::export`] and [`crate::import`].

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ds_protocol::NameLimits;
use ds_server::Config;

use crate::export::{self, ExportOptions, ExportSummary};
use crate::import::{self, ImportOptions, ImportSummary, OnConflict};
use crate::offline::{self, Offline, OpenFor, with_store};
use crate::progress::Progress;

/// Buffer size of the file and standard-stream readers and writers.
const IO_BUFFER: usize = 1024 * 1024;

/// `export`: writes the data dir's streams to `output` (a file, written under a temporary name
/// and renamed when complete) or to standard output.
pub(crate) async fn export(
    cfg: &Config,
    output: Option<PathBuf>,
    opts: &ExportOptions,
) -> anyhow::Result<()> {
    let to_stdout = output.as_deref().is_none_or(|p| p == Path::new("-"));
    if to_stdout && std::io::stdout().is_terminal() {
        bail!("refusing to write a binary export to a terminal: use -o FILE or redirect stdout");
    }
    let store = offline::open(cfg, "export", OpenFor::default()).await?;
    let mode = cfg.storage.mode.as_str();
    let mut progress = Progress::for_stderr("exported");
    let result = if let Some(path) = output.filter(|_| !to_stdout) {
        export_to_file(&store, &path, mode, opts, &mut progress).await
    } else {
        let out = BufWriter::with_capacity(IO_BUFFER, std::io::stdout().lock());
        let written = with_store!(&store, |s| export::export(
            s,
            out,
            mode,
            opts,
            &mut progress
        ));
        written.and_then(|(summary, mut out)| {
            out.flush()
                .context("cannot write the export to stdout")
                .map(|()| summary)
        })
    };
    store.close().await;
    let summary = result?;
    eprintln!(
        "exported {} stream(s), {} record(s), {} byte(s)",
        summary.streams, summary.records, summary.bytes
    );
    Ok(())
}

async fn export_to_file(
    store: &Offline,
    path: &Path,
    mode: &str,
    opts: &ExportOptions,
    progress: &mut Progress,
) -> anyhow::Result<ExportSummary> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file =
        File::create(&partial).with_context(|| format!("cannot create {}", partial.display()))?;
    let out = BufWriter::with_capacity(IO_BUFFER, file);
    let written = with_store!(store, |s| export::export(s, out, mode, opts, progress));
    let done = written.and_then(|(summary, out)| {
        let file = out
            .into_inner()
            .map_err(std::io::IntoInnerError::into_error)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        file.sync_all()
            .with_context(|| format!("cannot sync {}", partial.display()))?;
        std::fs::rename(&partial, path).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), path.display())
        })?;
        Ok(summary)
    });
    if done.is_err() {
        // Never leave a file that looks like an export but is not a complete one.
        let _ = std::fs::remove_file(&partial);
    }
    done
}

/// `import`: checks a file completely, then imports it; or imports standard input as it is
/// read (rolling back on failure).
pub(crate) async fn import(
    cfg: &Config,
    input: Option<PathBuf>,
    on_conflict: OnConflict,
) -> anyhow::Result<()> {
    let from_stdin = input.as_deref().is_none_or(|p| p == Path::new("-"));
    let opts = ImportOptions {
        on_conflict,
        name_limits: NameLimits {
            max_bytes: cfg.limits.max_stream_name_bytes,
            max_segments: cfg.limits.max_stream_name_segments,
        },
    };
    let summary = if let Some(path) = input.filter(|_| !from_stdin) {
        let open_file = || {
            File::open(&path)
                .map(|f| BufReader::with_capacity(IO_BUFFER, f))
                .with_context(|| format!("cannot open {}", path.display()))
        };
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let mut checking = Progress::for_stderr("checked");
        checking.begin(0, size);
        let names = import::verify(open_file()?, &mut checking)
            .with_context(|| format!("{} is not a complete, intact export", path.display()))?;
        checking.finish();
        let store = offline::open(
            cfg,
            "import",
            OpenFor {
                create: true,
                bulk: true,
            },
        )
        .await?;
        let result = async {
            if on_conflict == OnConflict::Fail {
                with_store!(&store, |s| import::check_conflicts(
                    s,
                    &names,
                    opts.name_limits
                ))?;
            }
            let mut progress = Progress::for_stderr("imported");
            progress.begin(names.len() as u64, size);
            with_store!(&store, |s| import::import(
                s,
                open_file()?,
                &opts,
                &mut progress
            ))
        }
        .await;
        store.close().await;
        result?
    } else {
        let store = offline::open(
            cfg,
            "import",
            OpenFor {
                create: true,
                bulk: true,
            },
        )
        .await?;
        let mut progress = Progress::for_stderr("imported");
        let stdin = BufReader::with_capacity(IO_BUFFER, std::io::stdin().lock());
        let result = with_store!(&store, |s| import::import(s, stdin, &opts, &mut progress));
        store.close().await;
        result?
    };
    report(&summary);
    Ok(())
}

fn report(s: &ImportSummary) {
    eprintln!(
        "imported {} stream(s) ({} replaced), skipped {} existing, {} already expired; {} \
         record(s), {} byte(s)",
        s.imported, s.replaced, s.skipped, s.expired, s.records, s.bytes
    );
}

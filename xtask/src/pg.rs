//! The `postgres` storage backend as the harnesses drive it from outside: every run gets a
//! schema of its own (derived from its data directory, so a restarted server finds the same
//! one), and the schema is dropped afterwards with `psql`.
//!
//! The database is `DS_TEST_POSTGRES_URL`, by default `postgres://postgres@127.0.0.1:5432/test`
//! (the development machines and CI run PostgreSQL there with trust authentication).

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The database the harnesses use.
pub(crate) fn url() -> String {
    std::env::var("DS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// The schema of the run whose data directory is `data_dir`: the same for every restart of
/// that run, different for every other run (temporary directories are unique).
pub(crate) fn schema_for(data_dir: &Path) -> String {
    // FNV-1a over the path's bytes.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data_dir.as_os_str().as_encoded_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("ds_xtask_{hash:016x}")
}

/// The database URL a run's servers use: [`url`] with the run's schema as the connections'
/// `application_name`, so [`reset_connections`] can find exactly them.
fn server_url(data_dir: &Path) -> String {
    let base = url();
    let name = schema_for(data_dir);
    if base.starts_with("postgres://") || base.starts_with("postgresql://") {
        let sep = if base.contains('?') { '&' } else { '?' };
        format!("{base}{sep}application_name={name}")
    } else {
        format!("{base} application_name={name}")
    }
}

/// The server environment that points the `postgres` backend at the run's schema.
pub(crate) fn env(data_dir: &Path) -> Vec<(String, OsString)> {
    vec![
        (
            "DS_STORAGE__POSTGRES__URL".into(),
            server_url(data_dir).into(),
        ),
        (
            "DS_STORAGE__POSTGRES__SCHEMA".into(),
            schema_for(data_dir).into(),
        ),
    ]
}

/// Runs one SQL command with `psql` against [`url`].
pub(crate) fn psql(sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .arg(url())
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .context("running psql (the postgres harness needs the PostgreSQL client)")?;
    if !out.status.success() {
        bail!(
            "psql failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Terminates every database connection of the run's servers (their pools and `LISTEN`
/// connections), as a database restart or a network cut would; returns how many there were.
pub(crate) fn reset_connections(data_dir: &Path) -> Result<u64> {
    let out = psql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = '{}'",
        schema_for(data_dir)
    ))?;
    out.trim()
        .parse()
        .with_context(|| format!("psql answered {out:?}"))
}

/// The process id of the node holding lease `name` in the run's schema (node ids are
/// `<host>-<pid>-<random>`), if an unexpired holder is recorded.
pub(crate) fn lease_holder_pid(data_dir: &Path, name: &str) -> Result<Option<u32>> {
    let out = psql(&format!(
        "SELECT holder FROM {}.ds_leases WHERE name = '{name}' AND expires_at > now()",
        schema_for(data_dir)
    ))?;
    Ok(holder_pid(out.trim()))
}

/// The pid in a node id `<host>-<pid>-<random hex>` (the host may contain `-`).
fn holder_pid(holder: &str) -> Option<u32> {
    let mut parts = holder.rsplitn(3, '-');
    let _random = parts.next()?;
    parts.next()?.parse().ok()
}

/// Drops the run's schema and everything in it.
pub(crate) fn drop_schema(data_dir: &Path) -> Result<()> {
    psql(&format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        schema_for(data_dir)
    ))
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_its_schema_and_runs_differ() {
        let a = schema_for(Path::new("/tmp/xtask-crash-1/data"));
        assert_eq!(a, schema_for(Path::new("/tmp/xtask-crash-1/data")));
        assert_ne!(a, schema_for(Path::new("/tmp/xtask-crash-2/data")));
        assert!(a.len() <= 40 && a.starts_with("ds_xtask_"), "{a}");
    }

    #[test]
    fn node_ids_name_their_pid() {
        assert_eq!(holder_pid("my-host-4242-0123456789abcdef"), Some(4242));
        assert_eq!(holder_pid("h-7-ff"), Some(7));
        assert_eq!(holder_pid(""), None);
        assert_eq!(holder_pid("no-pid"), None);
    }
}

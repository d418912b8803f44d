//! Where and when a run happened: date, machine and server versions, for the results file
//! and `docs/performance.md`.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::process::Command;

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch.
pub(crate) fn utc_timestamp(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm, restricted to dates after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Now, as `utc_timestamp` formats it.
pub(crate) fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_timestamp(secs)
}

/// The first `key: value` line of a `/proc` file whose key is `key`.
pub(crate) fn proc_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_owned())
    })
}

/// `/proc/loadavg`'s first three fields: the machine's other load, which skews absolute figures.
pub(crate) fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// nproc, CPU model, memory and kernel of this machine.
pub(crate) fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = proc_field(&meminfo, "MemTotal")
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| crate::stats::as_f64(kib) / 1024.0 / 1024.0);
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "cpu": proc_field(&cpuinfo, "model name"),
        "memory_gib": mem_gib.map(|g| (g * 10.0).round() / 10.0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
    })
}

/// A version string for a server binary: `cargo install`'s record beside it if any (it names
/// the package and version), else the first line of `--version`, else `unknown`.
pub(crate) async fn version_of(path: &Path) -> String {
    if let Some(root) = path.parent().and_then(Path::parent)
        && let Ok(text) = std::fs::read_to_string(root.join(".crates.toml"))
        && let Some(bin) = path.file_name().and_then(|f| f.to_str())
        && let Some(line) = text.lines().find(|l| l.contains(&format!("\"{bin}\"")))
        && let Some(pkg) = line.split('"').nth(1)
    {
        return pkg.split(" (").next().unwrap_or(pkg).to_owned();
    }
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        Command::new(path)
            .arg("--version")
            .kill_on_drop(true)
            .output(),
    )
    .await;
    if let Ok(Ok(out)) = out
        && out.status.success()
        && let Some(line) = String::from_utf8_lossy(&out.stdout).lines().next()
    {
        return line.trim().to_owned();
    }
    "unknown".to_owned()
}

/// `git describe`-like identity of the workspace: short commit plus `-dirty`.
pub(crate) async fn git_revision(root: &Path) -> Option<String> {
    let head = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .await
        .ok()?;
    if !head.status.success() {
        return None;
    }
    let mut rev = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    let dirty = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .await
        .ok()?;
    if !dirty.stdout.is_empty() {
        rev.push_str("-dirty");
    }
    Some(rev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn proc_fields() {
        let text = "processor\t: 0\nmodel name\t: AMD EPYC\nMemTotal:       24684032 kB\n";
        assert_eq!(proc_field(text, "model name").as_deref(), Some("AMD EPYC"));
        assert_eq!(proc_field(text, "MemTotal").as_deref(), Some("24684032 kB"));
        assert_eq!(proc_field(text, "flags"), None);
    }
}

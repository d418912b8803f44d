//! Progress of `export` and `import`: a progress bar (streams done, bytes, rate, ETA) when
//! standard error is a terminal, plain log lines every few seconds when it is not, nothing in
//! tests.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a log line is written off a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Reports how far a transfer is.
#[derive(Debug)]
pub struct Progress {
    verb: &'static str,
    out: Output,
    streams_total: u64,
    streams_done: u64,
    bytes_total: u64,
    bytes_done: u64,
    started: Instant,
    last_log: Instant,
}

#[derive(Debug)]
enum Output {
    Bar(ProgressBar),
    Log,
    Silent,
}

impl Progress {
    /// A bar on a terminal, log lines otherwise; `verb` (`exported`, `imported`) starts each
    /// line.
    ///
    /// # Panics
    ///
    /// Never: the bar's template is a constant known to parse.
    #[must_use]
    pub fn for_stderr(verb: &'static str) -> Self {
        let out = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} \
                     ({bytes_per_sec}, ETA {eta})",
                )
                .expect("the progress template is valid"),
            );
            Output::Bar(bar)
        } else {
            Output::Log
        };
        Progress::new(verb, out)
    }

    /// Reports nothing (library use and tests).
    #[must_use]
    pub fn silent() -> Self {
        Progress::new("", Output::Silent)
    }

    fn new(verb: &'static str, out: Output) -> Self {
        let now = Instant::now();
        Progress {
            verb,
            out,
            streams_total: 0,
            streams_done: 0,
            bytes_total: 0,
            bytes_done: 0,
            started: now,
            last_log: now,
        }
    }

    /// Sets the totals: streams (0 when unknown) and bytes.
    pub fn begin(&mut self, streams: u64, bytes: u64) {
        self.streams_total = streams;
        self.bytes_total = bytes;
        if let Output::Bar(bar) = &self.out {
            bar.set_length(bytes);
            bar.set_message(self.streams_text());
        }
    }

    /// `n` more bytes are done.
    pub fn bytes(&mut self, n: u64) {
        self.bytes_done += n;
        match &self.out {
            Output::Bar(bar) => bar.set_position(self.bytes_done.min(self.bytes_total)),
            Output::Log if self.last_log.elapsed() >= LOG_EVERY => self.log(),
            Output::Log | Output::Silent => {}
        }
    }

    /// Moves the byte count to `position` (an import reports its position in the file).
    pub fn position(&mut self, position: u64) {
        if position > self.bytes_done {
            self.bytes(position - self.bytes_done);
        }
    }

    /// One more stream is done.
    pub fn stream_done(&mut self) {
        self.streams_done += 1;
        if let Output::Bar(bar) = &self.out {
            bar.set_message(self.streams_text());
        }
    }

    /// The transfer is complete: clears the bar, or writes a last log line.
    pub fn finish(&mut self) {
        match &self.out {
            Output::Bar(bar) => bar.finish_and_clear(),
            Output::Log => self.log(),
            Output::Silent => {}
        }
    }

    fn streams_text(&self) -> String {
        if self.streams_total > 0 {
            format!("streams {}/{}", self.streams_done, self.streams_total)
        } else {
            format!("streams {}", self.streams_done)
        }
    }

    fn log(&mut self) {
        self.last_log = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let total = if self.bytes_total > 0 {
            format!(" of {}", human(self.bytes_total))
        } else {
            String::new()
        };
        // Figures for people: precision loss far beyond a petabyte does not matter.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_sign_loss,
            clippy::cast_possible_truncation
        )]
        let rate = (self.bytes_done as f64 / secs) as u64;
        eprintln!(
            "{} {}, {}{total}, {}/s, {secs:.0} s",
            self.verb,
            self.streams_text(),
            human(self.bytes_done),
            human(rate)
        );
    }
}

/// `bytes` in B, KiB, MiB or GiB with one decimal.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Display only: precision loss is irrelevant.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_like_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(2 * 1024 * 1024 * 1024), "2.0 GiB");
    }
}

//! The command line: scenarios, backends, peers and sizes. Hand-parsed, because the surface
//! is small and the bench keeps its dependencies few.

use std::path::PathBuf;

/// One benchmark shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Scenario {
    /// Many connections appending small messages to one stream.
    Append1,
    /// Many connections appending to many streams.
    AppendMany,
    /// Catch-up reads of a large stream, start to tail, repeatedly.
    Read,
    /// One read of a very large stream (1 GiB), start to tail: the server's peak RSS.
    BigRead,
    /// Many SSE subscribers on one stream, a paced producer.
    SseFanout,
    /// Many long-poll readers on one stream, a paced producer.
    LongpollFanout,
    /// Many connections creating streams.
    Create,
    /// Many small streams: memory held, and time to restart.
    IdleStreams,
}

impl Scenario {
    /// Every scenario, in the order the table shows them.
    pub(crate) const ALL: [Scenario; 8] = [
        Scenario::Append1,
        Scenario::AppendMany,
        Scenario::Read,
        Scenario::BigRead,
        Scenario::SseFanout,
        Scenario::LongpollFanout,
        Scenario::Create,
        Scenario::IdleStreams,
    ];

    /// The name used on the command line and in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scenario::Append1 => "append-1",
            Scenario::AppendMany => "append-many",
            Scenario::Read => "read",
            Scenario::BigRead => "big-read",
            Scenario::SseFanout => "sse-fanout",
            Scenario::LongpollFanout => "longpoll-fanout",
            Scenario::Create => "create",
            Scenario::IdleStreams => "idle-streams",
        }
    }

    fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|sc| sc.name() == s)
    }

    /// Whether a bigger primary figure is better (throughput) or a smaller one (latency, memory).
    pub(crate) fn higher_is_better(self) -> bool {
        matches!(
            self,
            Scenario::Append1 | Scenario::AppendMany | Scenario::Read | Scenario::Create
        )
    }
}

/// A storage mode, named as our server names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Backend {
    /// In memory, lost on restart.
    Memory,
    /// Append log, fsynced before the ack.
    FileDurable,
    /// Transactional store.
    Acid,
}

impl Backend {
    /// Every backend, in table order.
    pub(crate) const ALL: [Backend; 3] = [Backend::Memory, Backend::FileDurable, Backend::Acid];

    /// The `DS_STORAGE__MODE` value and the table label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::FileDurable => "file-durable",
            Backend::Acid => "acid",
        }
    }

    /// Whether data outlives the process.
    pub(crate) fn persistent(self) -> bool {
        !matches!(self, Backend::Memory)
    }
}

/// Everything a benchmark run needs from the command line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    /// Scenarios to run, in table order, without repeats.
    pub(crate) scenarios: Vec<Scenario>,
    /// Backends to run each scenario on.
    pub(crate) backends: Vec<Backend>,
    /// Peer servers: a table name and the binary.
    pub(crate) against: Vec<(String, PathBuf)>,
    /// Alternating rounds per scenario; the table shows medians.
    pub(crate) rounds: u32,
    /// Seconds per timed scenario.
    pub(crate) secs: f64,
    /// Tiny sizes, ~1 s per scenario, our server alone.
    pub(crate) smoke: bool,
    /// Our server binary; `None` means `target/release/durable-streams-server`.
    pub(crate) ours: Option<PathBuf>,
    /// SSE subscriber counts; `sse-fanout` runs once per count.
    pub(crate) subscribers: Vec<usize>,
    /// Long-poll reader count.
    pub(crate) readers: usize,
    /// Results file; `None` means `target/bench/results.json`.
    pub(crate) out: Option<PathBuf>,
    /// Parent of the per-run data dirs; `None` means `target/bench/data`.
    pub(crate) data_root: Option<PathBuf>,
    /// Worker threads of the load generator's runtime.
    pub(crate) client_threads: usize,
    /// big-read: stream size in MiB.
    pub(crate) big_read_mib: u64,
    /// Skip measuring the HTTP and fdatasync ceilings.
    pub(crate) no_ceiling: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scenarios: Scenario::ALL.to_vec(),
            backends: Backend::ALL.to_vec(),
            against: Vec::new(),
            rounds: 3,
            secs: 5.0,
            smoke: false,
            ours: None,
            subscribers: vec![1000],
            readers: 1000,
            out: None,
            data_root: None,
            client_threads: 2,
            big_read_mib: 1024,
            no_ceiling: false,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Command {
    /// Run the benchmark.
    Run(Box<Options>),
    /// Print usage.
    Help,
    /// Internal: serve the bare-hyper ceiling server on this loopback port.
    CeilingServer {
        /// Port to bind on 127.0.0.1.
        port: u16,
    },
}

/// The text `--help` prints.
pub(crate) const USAGE: &str = "\
ds-bench: side-by-side benchmark of Durable Streams servers

Usage: ds-bench [SCENARIO...] [OPTIONS]

Scenarios (default: all):
  append-1         32 connections appending 100-byte messages to one stream
  append-many      64 connections, 1,000 streams, 256-byte appends
  read             4 connections reading a 64 MiB stream start to tail, repeatedly
  big-read         a 1 GiB stream (1 MiB appends) read once start to tail on one
                   connection: peak server RSS during the read, MB/s
  sse-fanout       SSE subscribers on one stream, 200 messages at 50/s
  longpoll-fanout  1,000 long-poll readers, 100 messages at 20/s
  create           32 connections creating streams
  idle-streams     100,000 streams with one record each: RSS, restart time

Options:
  --backend memory|file-durable|acid|all   storage mode(s) to run (default: all)
  --against NAME=PATH                      also run this server binary (repeatable)
  --rounds N                               alternating rounds, medians shown (default: 3)
  --secs S                                 seconds per timed scenario (default: 5)
  --smoke                                  ~1 s per scenario, tiny sizes, our server alone
  --ours PATH                              our binary (default: target/release/durable-streams-server)
  --subscribers N[,N...]                   SSE subscriber counts (default: 1000)
  --readers N                              long-poll readers (default: 1000)
  --out PATH                               results file (default: target/bench/results.json)
  --data-root PATH                         where fresh data dirs go (default: target/bench/data)
  --client-threads N                       load-generator worker threads (default: 2)
  --big-read-mib N                         big-read stream size in MiB (default: 1024;
                                           --smoke uses 8)
  --no-ceiling                             skip the HTTP and fdatasync ceilings
  -h, --help                               this text
";

/// Parses the arguments after the program name.
pub(crate) fn parse<I>(args: I) -> Result<Command, String>
where
    I: IntoIterator<Item = String>,
{
    let mut opts = Options::default();
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut args = args.into_iter();
    let mut first = true;
    while let Some(arg) = args.next() {
        if first && arg == "__ceiling-server" {
            let port = args
                .next()
                .ok_or("__ceiling-server needs a port")?
                .parse()
                .map_err(|e| format!("__ceiling-server port: {e}"))?;
            return Ok(Command::CeilingServer { port });
        }
        first = false;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--backend" => {
                let v = value("--backend")?;
                opts.backends = parse_backends(&v)?;
            }
            "--against" => {
                let v = value("--against")?;
                let (name, path) = v
                    .split_once('=')
                    .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                    .ok_or_else(|| format!("--against wants NAME=PATH, got {v:?}"))?;
                if name == "ours" || opts.against.iter().any(|(n, _)| n == name) {
                    return Err(format!("--against name {name:?} is used twice"));
                }
                opts.against.push((name.to_owned(), PathBuf::from(path)));
            }
            "--rounds" => {
                opts.rounds = parse_positive(&value("--rounds")?, "--rounds")?;
            }
            "--secs" => {
                let v = value("--secs")?;
                let secs: f64 = v.parse().map_err(|e| format!("--secs {v:?}: {e}"))?;
                if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
                    return Err(format!("--secs must be in (0, 3600], got {v}"));
                }
                opts.secs = secs;
            }
            "--smoke" => opts.smoke = true,
            "--no-ceiling" => opts.no_ceiling = true,
            "--ours" => opts.ours = Some(PathBuf::from(value("--ours")?)),
            "--out" => opts.out = Some(PathBuf::from(value("--out")?)),
            "--data-root" => opts.data_root = Some(PathBuf::from(value("--data-root")?)),
            "--subscribers" => {
                let v = value("--subscribers")?;
                opts.subscribers = v
                    .split(',')
                    .map(|s| parse_positive::<usize>(s.trim(), "--subscribers"))
                    .collect::<Result<_, _>>()?;
                if opts.subscribers.iter().any(|&n| n > 15_000) {
                    return Err("--subscribers is capped at 15000 (file descriptors)".into());
                }
            }
            "--readers" => {
                opts.readers = parse_positive(&value("--readers")?, "--readers")?;
                if opts.readers > 15_000 {
                    return Err("--readers is capped at 15000 (file descriptors)".into());
                }
            }
            "--client-threads" => {
                opts.client_threads =
                    parse_positive(&value("--client-threads")?, "--client-threads")?;
            }
            "--big-read-mib" => {
                opts.big_read_mib = parse_positive(&value("--big-read-mib")?, "--big-read-mib")?;
                if opts.big_read_mib > 1 << 20 {
                    return Err("--big-read-mib is capped at 1048576 (1 TiB)".into());
                }
            }
            s if s.starts_with('-') => return Err(format!("unknown option {s:?}")),
            s => {
                let sc = Scenario::parse(s).ok_or_else(|| {
                    let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
                    format!("unknown scenario {s:?}; known: {}", names.join(", "))
                })?;
                if !scenarios.contains(&sc) {
                    scenarios.push(sc);
                }
            }
        }
    }
    if !scenarios.is_empty() {
        scenarios.sort();
        opts.scenarios = scenarios;
    }
    Ok(Command::Run(Box::new(opts)))
}

fn parse_backends(v: &str) -> Result<Vec<Backend>, String> {
    if v == "all" {
        return Ok(Backend::ALL.to_vec());
    }
    let mut out = Vec::new();
    for part in v.split(',') {
        let b = Backend::ALL
            .into_iter()
            .find(|b| b.name() == part.trim())
            .ok_or_else(|| {
                format!("unknown backend {part:?}; known: memory, file-durable, acid, all")
            })?;
        if !out.contains(&b) {
            out.push(b);
        }
    }
    out.sort();
    Ok(out)
}

fn parse_positive<T>(v: &str, name: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + Default,
    T::Err: std::fmt::Display,
{
    let n: T = v.parse().map_err(|e| format!("{name} {v:?}: {e}"))?;
    if n <= T::default() {
        return Err(format!("{name} must be positive, got {v}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(|s| (*s).to_owned()))? {
            Command::Run(o) => Ok(*o),
            other => Err(format!("not a run: {other:?}")),
        }
    }

    #[test]
    fn no_arguments_means_every_scenario_on_every_backend() {
        let o = run(&[]).unwrap();
        assert_eq!(o, Options::default());
        assert_eq!(o.scenarios.len(), 8);
        assert_eq!(o.backends, Backend::ALL.to_vec());
        assert_eq!(o.rounds, 3);
    }

    #[test]
    fn the_issue_command_line_parses() {
        let o = run(&[
            "append-1",
            "read",
            "--backend",
            "memory",
            "--against",
            "v015=/tmp/a/durable-streams-server",
            "--against=v030=/tmp/b/durable-streams-server",
            "--rounds",
            "5",
            "--secs=2.5",
        ])
        .unwrap();
        assert_eq!(o.scenarios, vec![Scenario::Append1, Scenario::Read]);
        assert_eq!(o.backends, vec![Backend::Memory]);
        assert_eq!(
            o.against,
            vec![
                ("v015".into(), "/tmp/a/durable-streams-server".into()),
                ("v030".into(), "/tmp/b/durable-streams-server".into())
            ]
        );
        assert_eq!(o.rounds, 5);
        assert!((o.secs - 2.5).abs() < f64::EPSILON);
    }

    #[test]
    fn big_read_and_its_size() {
        let o = run(&["big-read", "--big-read-mib", "64"]).unwrap();
        assert_eq!(o.scenarios, vec![Scenario::BigRead]);
        assert_eq!(o.big_read_mib, 64);
        assert_eq!(run(&[]).unwrap().big_read_mib, 1024);
        assert!(!Scenario::BigRead.higher_is_better());
        assert!(run(&["--big-read-mib", "0"]).is_err());
        assert!(run(&["--big-read-mib", "2000000"]).is_err());
    }

    #[test]
    fn scenarios_come_back_in_table_order_without_repeats() {
        let o = run(&["create", "append-1", "create"]).unwrap();
        assert_eq!(o.scenarios, vec![Scenario::Append1, Scenario::Create]);
    }

    #[test]
    fn backend_lists_and_all() {
        assert_eq!(
            run(&["--backend", "acid,memory"]).unwrap().backends,
            vec![Backend::Memory, Backend::Acid]
        );
        assert_eq!(
            run(&["--backend", "all"]).unwrap().backends,
            Backend::ALL.to_vec()
        );
        assert!(run(&["--backend", "file-fast"]).is_err());
    }

    #[test]
    fn subscriber_counts_are_a_list() {
        let o = run(&["--subscribers", "1000,5000", "--smoke"]).unwrap();
        assert_eq!(o.subscribers, vec![1000, 5000]);
        assert!(o.smoke);
        assert!(run(&["--subscribers", "0"]).is_err());
        assert!(run(&["--subscribers", "100000"]).is_err());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(run(&["--rounds"]).is_err());
        assert!(run(&["--rounds", "0"]).is_err());
        assert!(run(&["--secs", "-1"]).is_err());
        assert!(run(&["--secs", "NaN"]).is_err());
        assert!(run(&["--against", "nopath"]).is_err());
        assert!(run(&["--against", "ours=/x"]).is_err());
        assert!(run(&["--against", "a=/x", "--against", "a=/y"]).is_err());
        assert!(run(&["--frobnicate"]).is_err());
        assert!(run(&["append-2"]).is_err());
    }

    #[test]
    fn help_and_the_internal_ceiling_server() {
        assert_eq!(parse(["--help".to_owned()]).unwrap(), Command::Help);
        assert_eq!(
            parse(["__ceiling-server".to_owned(), "4000".to_owned()]).unwrap(),
            Command::CeilingServer { port: 4000 }
        );
        assert!(parse(["__ceiling-server".to_owned()]).is_err());
    }
}

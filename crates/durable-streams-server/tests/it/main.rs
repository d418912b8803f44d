//! Tests of the built `durable-streams-server` binary: startup phases and exit codes, the seed
//! README's command lines, certificate reload on SIGHUP, and shutdown on SIGTERM.

mod phases;
mod seed;
mod signals;
mod util;

//! Tests of the built `durable-streams-server` binary: startup phases and exit codes, the seed
//! README's command lines, certificate reload on SIGHUP, and shutdown on SIGTERM; and of the
//! `embed` example's app (the protocol mounted inside a host axum app).

mod embed;
mod offline;
mod phases;
mod seed;
mod signals;
mod util;

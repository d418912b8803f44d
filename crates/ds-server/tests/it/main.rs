//! Integration tests of the router, driven in-process with `tower::ServiceExt::oneshot` on
//! the memory backend, and of the transport (TLS, HTTP/2, mTLS, proxy trust, shutdown) over
//! loopback sockets.

mod bad_input;
mod cluster;
mod disk_full;
mod file_reads;
mod limits;
mod live;
mod metrics;
mod model;
mod net;
mod operator;
mod otlp;
mod protocol;
mod proxy;
mod seed_config;
mod shutdown;
mod storage_config;
mod tls;
mod util;

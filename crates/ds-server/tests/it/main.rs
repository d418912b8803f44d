//! Integration tests of the router, driven in-process with `tower::ServiceExt::oneshot` on
//! the memory backend.

mod bad_input;
mod live;
mod protocol;
mod util;

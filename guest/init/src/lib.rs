//! kiln-init: `/init` of Kiln's Linux guest (see `main.rs`), and its function agent
//! ([`agent`]), which speaks the invocation protocol over any byte stream so that it can be
//! tested on a host over a Unix socket.

pub mod agent;
pub mod context;
pub mod lambda;

//! spoor-runtime: what every native (tokio) Spoor process shares.
//!
//! - [`nats`]: where a NATS server is and how to connect to it (TLS first,
//!   nkey users), and the `--nats-*` flags that say so;
//! - [`debug`]: the device debug lookup client (the relays answer, the
//!   relay's HTTP endpoint and the `spoor` CLI ask);
//! - [`shell`]: the daemon shell: logging set-up, the shutdown signal and
//!   the HTTP accept loop;
//! - [`supervise`]: the task supervisor that gives a daemon one exit path;
//! - [`env`]: renamed environment variables, still read under their old
//!   names with a warning;
//! - [`stream_read`]: a read-only pass over a stretch of a JetStream
//!   stream (ephemeral ordered consumer), for the CLI and the load tester;
//! - [`window`]: `--since`/`--until` arguments (RFC 3339 or a span back).
//!
//! The names processes agree on over NATS (streams, subjects, headers) are
//! not here but in `spoor_core::contract`, which the edge shares.

pub mod debug;
pub mod env;
pub mod nats;
pub mod shell;
pub mod stream_read;
pub mod supervise;
pub mod window;

pub use nats::{NatsArgs, NatsConnectError, NatsEndpoint};
pub use supervise::{Supervisor, TaskExit};

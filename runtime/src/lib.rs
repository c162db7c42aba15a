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
//!   names with a warning.
//!
//! The names processes agree on over NATS (streams, subjects, headers) are
//! not here but in `spoor_core::contract`, which the edge shares.

pub mod debug;
pub mod env;
pub mod nats;
pub mod shell;
pub mod supervise;

pub use nats::{NatsArgs, NatsConnectError, NatsEndpoint};
pub use supervise::{Supervisor, TaskExit};

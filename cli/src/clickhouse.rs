//! ClickHouse for the CLI's reconciliation: the store's plain-text
//! (TabSeparated) query client, under the names the CLI uses.

pub use spoor_store::text::{quote, TextClient as ClickHouse, TextError as ClickHouseError};

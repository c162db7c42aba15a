//! Where rows go. One folder per sink; today there is only ClickHouse.
pub mod clickhouse;

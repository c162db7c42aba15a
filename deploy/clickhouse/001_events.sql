-- Spoor's raw events table: one row per accepted, deduplicated event.
--
-- Runs on ClickHouse 18.16 (Debian's) and on current releases: no TTL, no
-- DateTime64, no LowCardinality, no JSON type. Statements are idempotent and
-- use unqualified names; the migrator runs them inside the target database.
--
-- Partitioned by the UTC event day (computed by the relay, independent of the
-- server's timezone) so late events land in their own day and retention can
-- drop whole days. Ordered for scanning one project's events over time, by
-- event name within a day (the common filter), with event_id last so the
-- ReplacingMergeTree backstop collapses any duplicate that slipped through.
CREATE TABLE IF NOT EXISTS events
(
    project_id       String,
    event_date       Date,
    event_time       DateTime,
    ts_ms            Int64,
    event_id         UUID,
    event_id_derived UInt8,
    event            String,
    user_id          String,
    anonymous_id     String,
    session_id       String,
    client_ts_ms     Nullable(Int64),
    sent_at_ms       Nullable(Int64),
    received_at_ms   Int64,
    properties       String,
    page_url         String,
    page_path        String,
    page_referrer    String,
    page_title       String,
    app_name         String,
    app_version      String,
    library_name     String,
    library_version  String,
    locale           String,
    screen_width     UInt32,
    screen_height    UInt32,
    country          String,
    region           String,
    city             String,
    timezone         String,
    continent        String,
    colo             String,
    asn              UInt32,
    browser          String,
    browser_version  String,
    os               String,
    os_version       String,
    device_type      String,
    is_bot           UInt8,
    ip_prefix        String,
    edge_region      String,
    batch_id         String,
    inserted_at      DateTime DEFAULT now()
)
ENGINE = ReplacingMergeTree
PARTITION BY event_date
ORDER BY (project_id, event_date, event, event_id)

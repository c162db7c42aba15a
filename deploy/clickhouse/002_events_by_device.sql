-- The debug engineer's tables: one device's (or one user's) recent events by
-- point lookup, where `events` is laid out for scans by project and day.
--
-- Runs on ClickHouse 18.16 and on current releases (no TTL, no
-- LowCardinality). Idempotent; unqualified names, run inside the target
-- database by the migrator.
--
-- Both tables are written only by their materialized views, which fire on
-- every INSERT into `events`: the relay writes `events` and nothing else, so
-- the device tables hold exactly what `events` accepted, from the moment the
-- views exist. Rows inserted before that are not copied; deploy/README.md
-- has the backfill statement.
--
-- Retention is shorter than `events` (7 days by default against 90) and is
-- enforced by dropping whole day partitions (18.16 has no TTL): the relay's
-- `--device-retention-days` task, policy in `spoor_store::retention`.

-- One row per stored event, ordered so that one device's events over a time
-- range are one contiguous range of the primary key: (project, device,
-- time). ReplacingMergeTree, like `events`, because a duplicate that slips
-- into `events` reaches this table through the view too; the sorting key
-- ends in event_id so merges collapse it, and lookups add
-- `LIMIT 1 BY event_id` so they never show one before the merge.
CREATE TABLE IF NOT EXISTS events_by_device
(
    project_id       String,
    event_date       Date,
    anonymous_id     String,
    ts_ms            Int64,
    event_id         UUID,
    event_id_derived UInt8,
    event            String,
    user_id          String,
    session_id       String,
    client_ts_ms     Nullable(Int64),
    sent_at_ms       Nullable(Int64),
    received_at_ms   Int64,
    inserted_at      DateTime DEFAULT now(),
    batch_id         String,
    edge_region      String,
    properties       String,
    page_url         String,
    page_path        String,
    page_title       String,
    app_name         String,
    app_version      String,
    library_name     String,
    library_version  String,
    country          String,
    city             String,
    colo             String,
    browser          String,
    browser_version  String,
    os               String,
    os_version       String,
    device_type      String,
    is_bot           UInt8
)
ENGINE = ReplacingMergeTree
PARTITION BY event_date
ORDER BY (project_id, anonymous_id, ts_ms, event_id)
-- Point lookups: one device's rows are contiguous in each part, so a lookup
-- reads about one granule per part; 1,024 rows instead of the default 8,192
-- cuts what a week-long lookup reads (about 30 parts) eightfold.
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_by_device_mv TO events_by_device AS
SELECT
    project_id, event_date, anonymous_id, ts_ms, event_id, event_id_derived,
    event, user_id, session_id, client_ts_ms, sent_at_ms, received_at_ms,
    inserted_at, batch_id, edge_region, properties, page_url, page_path,
    page_title, app_name, app_version, library_name, library_version,
    country, city, colo, browser, browser_version, os, os_version,
    device_type, is_bot
FROM events;

-- Which devices a user was seen on, and when: one narrow row per event that
-- carries a user_id, keyed by (project, user, time). A lookup by user_id
-- reads its devices here (one primary-key range), then their events from
-- `events_by_device`. A plain MergeTree: a duplicate row only repeats a
-- device that the lookup deduplicates anyway.
CREATE TABLE IF NOT EXISTS device_users
(
    project_id   String,
    event_date   Date,
    user_id      String,
    ts_ms        Int64,
    anonymous_id String
)
ENGINE = MergeTree
PARTITION BY event_date
ORDER BY (project_id, user_id, ts_ms)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS device_users_mv TO device_users AS
SELECT project_id, event_date, user_id, ts_ms, anonymous_id
FROM events
WHERE user_id != '';

-- The read path's rollups: events pre-aggregated by minute, hour and day
-- over the common dimensions, so dashboard questions read thousands of rows
-- instead of millions. The aggregator answers from the smallest table that
-- can answer a question and falls back to `events` otherwise (properties,
-- sums and averages, the dimensions not kept here, bucket edges that do not
-- line up).
--
-- Runs on ClickHouse 18.16 and on current releases: AggregatingMergeTree
-- with -State columns written by materialized views and read with -Merge
-- (no SimpleAggregateFunction, no TTL). Idempotent; unqualified names, run
-- inside the target database by the migrator.
--
-- Each table is fed by its own view on `events`, which fires on every INSERT
-- the relay makes: a late event folds into the bucket of its own event time,
-- whatever day it arrives. Buckets are UTC (explicit 'UTC' so the server's
-- timezone never matters); `event_date` is the UTC day, as in `events`.
--
-- What the states hold, and why these functions:
-- * events: countState(), so merged buckets add up exactly;
-- * users:  uniqExactState of the user key (user_id, or the device for
--   events without one), the same expression and the same exact function the
--   raw query uses, so a rollup answer equals the raw answer, not an estimate;
-- * last_received_ms (minute table only): the newest edge receipt time, for
--   the `freshness_seconds` every answer carries.
-- A duplicate row that slips into `events` (ReplacingMergeTree collapses it
-- there only at merge time) is counted once more here by `events`; `users`
-- is unaffected. The relay's dedup layers keep that rare.
--
-- index_granularity 256 instead of 8,192: a row's `users` state holds every
-- user of its cell, so rows are large and few (a day table of a month is a
-- few thousand rows); small granules let a question read only its own days
-- and events instead of the whole table's states.
--
-- Partitioned by month: rollups are kept longer than raw events (400 days by
-- default against 90), and retention drops whole months past the cutoff
-- (the relay's retention task, policy in `spoor_store::retention`).

CREATE TABLE IF NOT EXISTS events_rollup_minute
(
    project_id       String,
    event_date       Date,
    bucket           DateTime,
    event            String,
    country          String,
    device_type      String,
    browser          String,
    os               String,
    events           AggregateFunction(count),
    users            AggregateFunction(uniqExact, String),
    last_received_ms AggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (project_id, bucket, event, country, device_type, browser, os)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_rollup_minute_mv TO events_rollup_minute AS
SELECT
    project_id,
    event_date,
    toStartOfMinute(event_time, 'UTC') AS bucket,
    event, country, device_type, browser, os,
    countState() AS events,
    uniqExactState(if(user_id != '', user_id, anonymous_id)) AS users,
    maxState(received_at_ms) AS last_received_ms
FROM events
GROUP BY project_id, event_date, bucket, event, country, device_type, browser, os;

CREATE TABLE IF NOT EXISTS events_rollup_hour
(
    project_id  String,
    event_date  Date,
    bucket      DateTime,
    event       String,
    country     String,
    device_type String,
    browser     String,
    os          String,
    events      AggregateFunction(count),
    users       AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (project_id, bucket, event, country, device_type, browser, os)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_rollup_hour_mv TO events_rollup_hour AS
SELECT
    project_id,
    event_date,
    toStartOfHour(event_time, 'UTC') AS bucket,
    event, country, device_type, browser, os,
    countState() AS events,
    uniqExactState(if(user_id != '', user_id, anonymous_id)) AS users
FROM events
GROUP BY project_id, event_date, bucket, event, country, device_type, browser, os;

CREATE TABLE IF NOT EXISTS events_rollup_day
(
    project_id  String,
    event_date  Date,
    bucket      DateTime,
    event       String,
    country     String,
    device_type String,
    browser     String,
    os          String,
    events      AggregateFunction(count),
    users       AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(event_date)
ORDER BY (project_id, bucket, event, country, device_type, browser, os)
SETTINGS index_granularity = 256;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_rollup_day_mv TO events_rollup_day AS
SELECT
    project_id,
    event_date,
    toStartOfDay(event_time, 'UTC') AS bucket,
    event, country, device_type, browser, os,
    countState() AS events,
    uniqExactState(if(user_id != '', user_id, anonymous_id)) AS users
FROM events
GROUP BY project_id, event_date, bucket, event, country, device_type, browser, os;

-- Identity: who a device's user is, and the latest traits of each user and
-- group, from the `identify`, `alias` and `group` events in `events`
-- (Segment's calls through the edge, and the `identify` / `alias` events of
-- Spoor's web SDK).
--
-- Runs on ClickHouse 18.16 and on current releases: AggregatingMergeTree
-- with -State columns written by materialized views and read with -Merge,
-- JSON read only with the flat `visitParamExtract*` functions (18.16 has no
-- JSONExtract). Idempotent; unqualified names, run inside the target
-- database by the migrator. Like the device tables, these are written only
-- by their views, which fire on every INSERT into `events`; events stored
-- before the views existed are not copied (deploy/README.md has the
-- backfill statement).
--
-- Where the fields are, per event:
-- * Segment's (`properties` starts with `{"$segment":`): the edge writes
--   `$segment` with `type`, `messageId`, `groupId`, `previousId` and
--   `traits` (`{}` when the call had none) before the client's `context`
--   and `integrations`, so the first `"traits":`, `"groupId":` and
--   `"previousId":` of the text, which is what visitParamExtract* reads,
--   are `$segment`'s own (spoor_core::segment::SEGMENT_KEY_ORDER).
-- * Spoor's: an `identify`'s properties are its traits; an `alias` names the
--   old id in `properties.previous_id`.
-- An id that is a JSON number is kept as its text, as the edge keeps a
-- numeric user_id.
--
-- Partitioned by the event's UTC day and dropped with the device tables
-- (`--device-retention-days`, policy in `spoor_store::retention`): a pair's
-- or a trait's rows are spread over the days it was seen on, and a read
-- merges them (`GROUP BY` with -Merge), so first seen is the first day
-- still kept and the latest traits are those of the newest identify kept.

-- Every (project, user, anonymous id) pair an identify or alias linked, with
-- when it was first and last seen (event time). Ordered by user: a user's
-- anonymous ids are one primary-key range (the user timeline reads them).
-- The anonymous id is the event's `anonymous_id` for identify and alias,
-- and an alias's previous id too (an earlier anonymous id, or an earlier
-- user id, which then reads as one of the user's ids).
CREATE TABLE IF NOT EXISTS identity_links
(
    project_id    String,
    event_date    Date,
    user_id       String,
    anonymous_id  String,
    first_seen_ms AggregateFunction(min, Int64),
    last_seen_ms  AggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY event_date
ORDER BY (project_id, user_id, anonymous_id)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS identity_links_mv TO identity_links AS
SELECT
    project_id, event_date, user_id, anonymous_id,
    minState(ts_ms) AS first_seen_ms,
    maxState(ts_ms) AS last_seen_ms
FROM events
WHERE event IN ('identify', 'alias')
  AND user_id != '' AND anonymous_id != '' AND anonymous_id != user_id
GROUP BY project_id, event_date, user_id, anonymous_id;

-- An alias's previous id: Segment's `previousId`, or Spoor's `previous_id`;
-- a string, or a number as its text. The expression is written out in the
-- SELECT and the GROUP BY (not referred to by its alias, which would shadow
-- the `anonymous_id` column of `events`).
CREATE MATERIALIZED VIEW IF NOT EXISTS identity_aliases_mv TO identity_links AS
SELECT
    project_id, event_date, user_id,
    if(substring(properties, 1, 12) = '{"$segment":',
       multiIf(substring(visitParamExtractRaw(properties, 'previousId'), 1, 1) = '"',
               visitParamExtractString(properties, 'previousId'),
               match(visitParamExtractRaw(properties, 'previousId'), '^[-+.0-9eE]+$'),
               visitParamExtractRaw(properties, 'previousId'), ''),
       multiIf(substring(visitParamExtractRaw(properties, 'previous_id'), 1, 1) = '"',
               visitParamExtractString(properties, 'previous_id'),
               match(visitParamExtractRaw(properties, 'previous_id'), '^[-+.0-9eE]+$'),
               visitParamExtractRaw(properties, 'previous_id'), '')) AS anonymous_id,
    minState(ts_ms) AS first_seen_ms,
    maxState(ts_ms) AS last_seen_ms
FROM events
WHERE event = 'alias' AND user_id != ''
  AND NOT has(['', user_id],
      if(substring(properties, 1, 12) = '{"$segment":',
         multiIf(substring(visitParamExtractRaw(properties, 'previousId'), 1, 1) = '"',
                 visitParamExtractString(properties, 'previousId'),
                 match(visitParamExtractRaw(properties, 'previousId'), '^[-+.0-9eE]+$'),
                 visitParamExtractRaw(properties, 'previousId'), ''),
         multiIf(substring(visitParamExtractRaw(properties, 'previous_id'), 1, 1) = '"',
                 visitParamExtractString(properties, 'previous_id'),
                 match(visitParamExtractRaw(properties, 'previous_id'), '^[-+.0-9eE]+$'),
                 visitParamExtractRaw(properties, 'previous_id'), '')))
GROUP BY project_id, event_date, user_id,
    if(substring(properties, 1, 12) = '{"$segment":',
       multiIf(substring(visitParamExtractRaw(properties, 'previousId'), 1, 1) = '"',
               visitParamExtractString(properties, 'previousId'),
               match(visitParamExtractRaw(properties, 'previousId'), '^[-+.0-9eE]+$'),
               visitParamExtractRaw(properties, 'previousId'), ''),
       multiIf(substring(visitParamExtractRaw(properties, 'previous_id'), 1, 1) = '"',
               visitParamExtractString(properties, 'previous_id'),
               match(visitParamExtractRaw(properties, 'previous_id'), '^[-+.0-9eE]+$'),
               visitParamExtractRaw(properties, 'previous_id'), ''));

-- The latest traits of each user: the traits of their newest identify (by
-- event time) that had any. An identify without traits leaves them as they
-- were; the traits are the call's whole object, not merged with older ones.
CREATE TABLE IF NOT EXISTS user_traits
(
    project_id String,
    event_date Date,
    user_id    String,
    traits     AggregateFunction(argMax, String, Int64),
    updated_ms AggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY event_date
ORDER BY (project_id, user_id)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS user_traits_mv TO user_traits AS
SELECT
    project_id, event_date, user_id,
    argMaxState(if(substring(properties, 1, 12) = '{"$segment":',
                   visitParamExtractRaw(properties, 'traits'), properties), ts_ms) AS traits,
    maxState(ts_ms) AS updated_ms
FROM events
WHERE event = 'identify' AND user_id != ''
  AND NOT has(['', '{}'], if(substring(properties, 1, 12) = '{"$segment":',
                             visitParamExtractRaw(properties, 'traits'), properties))
GROUP BY project_id, event_date, user_id;

-- The latest traits of each group (Segment's `group` call), as for users.
CREATE TABLE IF NOT EXISTS group_traits
(
    project_id String,
    event_date Date,
    group_id   String,
    traits     AggregateFunction(argMax, String, Int64),
    updated_ms AggregateFunction(max, Int64)
)
ENGINE = AggregatingMergeTree
PARTITION BY event_date
ORDER BY (project_id, group_id)
SETTINGS index_granularity = 1024;

CREATE MATERIALIZED VIEW IF NOT EXISTS group_traits_mv TO group_traits AS
SELECT
    project_id, event_date,
    multiIf(substring(visitParamExtractRaw(properties, 'groupId'), 1, 1) = '"',
            visitParamExtractString(properties, 'groupId'),
            match(visitParamExtractRaw(properties, 'groupId'), '^[-+.0-9eE]+$'),
            visitParamExtractRaw(properties, 'groupId'), '') AS group_id,
    argMaxState(visitParamExtractRaw(properties, 'traits'), ts_ms) AS traits,
    maxState(ts_ms) AS updated_ms
FROM events
WHERE event = 'group' AND substring(properties, 1, 12) = '{"$segment":'
  AND NOT has(['', '{}'], visitParamExtractRaw(properties, 'traits'))
  AND multiIf(substring(visitParamExtractRaw(properties, 'groupId'), 1, 1) = '"',
              visitParamExtractString(properties, 'groupId'),
              match(visitParamExtractRaw(properties, 'groupId'), '^[-+.0-9eE]+$'),
              visitParamExtractRaw(properties, 'groupId'), '') != ''
GROUP BY project_id, event_date, group_id;

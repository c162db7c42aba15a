-- The campaign that brought an event's visitor, as columns of `events`:
-- the client's `context.campaign` (Segment's SDKs send it; Spoor's JSON may)
-- or else the `utm_*` parameters of the event's page URL, read at the edge
-- (spoor_core::campaign). `utm_campaign` is Segment's `campaign.name`.
--
-- Runs on ClickHouse 18.16 and on current releases. 18.16 has no
-- `ADD COLUMN IF NOT EXISTS`, so each statement adds one column and the
-- migrator (spoor_store::schema::apply) runs it only when `system.columns`
-- does not list the column yet: applying this file twice, or to a
-- deployment that already has the columns, changes nothing. Existing rows
-- read the DEFAULT, ''. Each column goes `AFTER` the one before it, so the
-- table's order is the relay's row (spoor_store::EventRow) and
-- `inserted_at` stays last.
--
-- Only `events` gets them: the device tables (`events_by_device`,
-- `device_users`) serve debug lookups and timelines, which show the page,
-- not the campaign, and the rollups keep five dimensions only; campaign
-- breakdowns read `events` (the aggregator's `utm_*` dimensions).
ALTER TABLE events ADD COLUMN utm_source String DEFAULT '' AFTER batch_id;
ALTER TABLE events ADD COLUMN utm_medium String DEFAULT '' AFTER utm_source;
ALTER TABLE events ADD COLUMN utm_campaign String DEFAULT '' AFTER utm_medium;
ALTER TABLE events ADD COLUMN utm_term String DEFAULT '' AFTER utm_campaign;
ALTER TABLE events ADD COLUMN utm_content String DEFAULT '' AFTER utm_term;

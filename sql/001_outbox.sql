-- 001_outbox.sql: the outbox table that outbox-relay publishes to Kafka (DESIGN.md section 3).
-- Apply the files of sql/ in name order with psql, as a role that may create tables; each file is idempotent.
--   id             event id: Kafka header `event_id`, consumers dedupe on it
--   aggregate_type routes to the topic (e.g. `booking` -> `outbox.booking`)
--   aggregate_id   Kafka message key: per-aggregate order
--   event_type     Kafka header `event_type`
--   payload        the Kafka value, as JSON bytes
--   headers        extra Kafka headers (e.g. W3C `traceparent`), a JSON object of strings
--   created_at     Kafka header `created_at`
-- Rows may be deleted right after insert (even in the same transaction): the publication is insert-only.
-- gen_random_uuid() is built in since Postgres 13.

CREATE TABLE IF NOT EXISTS public.outbox (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL,
    headers        jsonb       NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

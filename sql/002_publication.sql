-- 002_publication.sql: the publication outbox-relay's replication slot decodes through pgoutput.
-- Insert-only: the relay never sees updates or deletes, so rows can be deleted right after insert.
-- CREATE PUBLICATION has no IF NOT EXISTS: the DO block keeps this file idempotent.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = 'outbox_pub') THEN
        CREATE PUBLICATION outbox_pub FOR TABLE public.outbox WITH (publish = 'insert');
    END IF;
END
$$;

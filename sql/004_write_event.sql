-- 004_write_event.sql: write one outbox event in the caller's transaction, from any language, in one call:
--   BEGIN;
--     UPDATE booking SET ...;
--     SELECT outbox_write('booking', '42', 'BookingConfirmed', '{"id":42}'::jsonb);
--   COMMIT;
-- The event is published if and only if the caller's transaction commits. Returns the event id.
-- Runs with the caller's rights (SECURITY INVOKER): the caller needs INSERT on public.outbox.

CREATE OR REPLACE FUNCTION public.outbox_write(
    p_aggregate_type text,
    p_aggregate_id   text,
    p_event_type     text,
    p_payload        jsonb,
    p_headers        jsonb DEFAULT NULL
) RETURNS uuid
LANGUAGE sql
VOLATILE
AS $$
    INSERT INTO public.outbox (aggregate_type, aggregate_id, event_type, payload, headers)
    VALUES (p_aggregate_type, p_aggregate_id, p_event_type, p_payload, p_headers)
    RETURNING id;
$$;

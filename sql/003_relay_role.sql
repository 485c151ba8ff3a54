-- 003_relay_role.sql: the least-privileged role outbox-relay logs in as.
-- LOGIN REPLICATION lets it create/read its logical replication slot; it is NOT a superuser, and may read
-- the outbox table only. No password is set here; the operator sets one out of band, e.g.:
--   ALTER ROLE outbox_relay PASSWORD '...';
-- and allows it in pg_hba.conf for both `host <db> outbox_relay` and `host replication outbox_relay` lines.
-- CREATE ROLE has no IF NOT EXISTS: the DO block keeps this file idempotent.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'outbox_relay') THEN
        CREATE ROLE outbox_relay LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

-- Re-assert the attributes in case the role existed with others (idempotent).
ALTER ROLE outbox_relay LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE;

GRANT USAGE ON SCHEMA public TO outbox_relay;
GRANT SELECT ON public.outbox TO outbox_relay;

-- 003_relay_role.sql: the least-privileged role outbox-relay logs in as.
-- LOGIN REPLICATION lets it create/read its logical replication slot; it is NOT a superuser, and may read
-- the outbox table only. Apply as a superuser: Postgres 15 lets only superusers create a REPLICATION role.
-- No password is set here; the operator sets one out of band, e.g. psql's \password outbox_relay, and
-- allows the role in pg_hba.conf with the database's own line, e.g.
--   host  <db>  outbox_relay  <relay address>/32  scram-sha-256
-- Its replication connection is a logical one: it names the database and matches that line. A
-- `host replication ...` line is for physical replication only and is not needed (README, Database setup).
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

-- lockstep triggers install (postgres, capture = "rows")

BEGIN;

SET LOCAL lock_timeout = '10s';

CREATE TABLE IF NOT EXISTS "lockstep_changes" (
    seq bigserial PRIMARY KEY,
    tbl text NOT NULL,
    op char(1) NOT NULL,
    pk json NOT NULL,
    before json,
    after json,
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    origin text
);

CREATE OR REPLACE FUNCTION lockstep_capture() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $lockstep$
DECLARE
    rows boolean := TG_ARGV[0] = 'rows';
    tbl text := TG_ARGV[1];
    origin text := NULLIF(current_setting('lockstep.origin', true), '');
    old_pk json;
    new_pk json;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        old_pk := (SELECT json_object_agg(k, row_to_json(OLD) -> k) FROM unnest(TG_ARGV[2:]) AS k);
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_pk := (SELECT json_object_agg(k, row_to_json(NEW) -> k) FROM unnest(TG_ARGV[2:]) AS k);
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO "lockstep_changes" (tbl, op, pk, after, origin)
        VALUES (tbl, 'c', new_pk, CASE WHEN rows THEN row_to_json(NEW) END, origin);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO "lockstep_changes" (tbl, op, pk, before, origin)
        VALUES (tbl, 'd', old_pk, CASE WHEN rows THEN row_to_json(OLD) END, origin);
    ELSIF old_pk::text IS DISTINCT FROM new_pk::text THEN
        INSERT INTO "lockstep_changes" (tbl, op, pk, before, origin)
        VALUES (tbl, 'd', old_pk, CASE WHEN rows THEN row_to_json(OLD) END, origin);
        INSERT INTO "lockstep_changes" (tbl, op, pk, after, origin)
        VALUES (tbl, 'c', new_pk, CASE WHEN rows THEN row_to_json(NEW) END, origin);
    ELSE
        INSERT INTO "lockstep_changes" (tbl, op, pk, before, after, origin)
        VALUES (tbl, 'u', new_pk, CASE WHEN rows THEN row_to_json(OLD) END, CASE WHEN rows THEN row_to_json(NEW) END, origin);
    END IF;
    RETURN NULL;
END
$lockstep$;

CREATE OR REPLACE FUNCTION lockstep_notify() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $lockstep$
BEGIN
    PERFORM pg_notify('lockstep_changes', '');
    RETURN NULL;
END
$lockstep$;

DO $lockstep$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgrelid = '"lockstep_changes"'::regclass AND tgname = 'lockstep_notify') THEN
        CREATE TRIGGER lockstep_notify AFTER INSERT ON "lockstep_changes" FOR EACH STATEMENT EXECUTE FUNCTION lockstep_notify();
    END IF;
END
$lockstep$;

DROP TRIGGER IF EXISTS lockstep_capture ON "appointments";

CREATE TRIGGER lockstep_capture AFTER INSERT OR UPDATE OR DELETE ON "appointments" FOR EACH ROW EXECUTE FUNCTION lockstep_capture('rows', 'appointments', 'id');

DROP TRIGGER IF EXISTS lockstep_capture ON "clinics";

CREATE TRIGGER lockstep_capture AFTER INSERT OR UPDATE OR DELETE ON "clinics" FOR EACH ROW EXECUTE FUNCTION lockstep_capture('rows', 'clinics', 'region', 'code');

DROP TRIGGER IF EXISTS lockstep_capture ON "scans";

CREATE TRIGGER lockstep_capture AFTER INSERT OR UPDATE OR DELETE ON "scans" FOR EACH ROW EXECUTE FUNCTION lockstep_capture('rows', 'scans', 'id');

COMMIT;
-- lockstep triggers uninstall

DROP TRIGGER IF EXISTS lockstep_capture ON "appointments";

DROP TRIGGER IF EXISTS lockstep_capture ON "clinics";

DROP TRIGGER IF EXISTS lockstep_capture ON "scans";

-- then, only when this counts no trigger left (of any source):
-- SELECT count(*) FROM pg_trigger WHERE tgfoid = to_regproc('lockstep_capture') AND NOT tgisinternal

DROP TABLE IF EXISTS "lockstep_changes";

DROP FUNCTION IF EXISTS lockstep_notify();

DROP FUNCTION IF EXISTS lockstep_capture();


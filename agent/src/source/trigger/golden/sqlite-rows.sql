-- lockstep triggers install (sqlite, capture = "rows")

BEGIN IMMEDIATE;

CREATE TABLE IF NOT EXISTS "lockstep_changes" (
    "seq" INTEGER PRIMARY KEY AUTOINCREMENT,
    "tbl" TEXT NOT NULL,
    "op" TEXT NOT NULL,
    "pk" TEXT NOT NULL,
    "before" TEXT,
    "after" TEXT,
    "changed_at" TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    "origin" TEXT
);

DROP TRIGGER IF EXISTS "lockstep_appointments_ins";

DROP TRIGGER IF EXISTS "lockstep_appointments_upd";

DROP TRIGGER IF EXISTS "lockstep_appointments_updk";

DROP TRIGGER IF EXISTS "lockstep_appointments_del";

CREATE TRIGGER "lockstep_appointments_ins" AFTER INSERT ON "appointments" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('appointments', 'c', json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END), json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END, 'clinic', CASE WHEN typeof(NEW."clinic") = 'blob' THEN hex(NEW."clinic") ELSE NEW."clinic" END, 'fee', CASE WHEN typeof(NEW."fee") = 'blob' THEN hex(NEW."fee") ELSE NEW."fee" END), NULL);
END;

CREATE TRIGGER "lockstep_appointments_upd" AFTER UPDATE ON "appointments" WHEN OLD."id" IS NEW."id" COLLATE BINARY BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('appointments', 'u', json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END), json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END, 'clinic', CASE WHEN typeof(OLD."clinic") = 'blob' THEN hex(OLD."clinic") ELSE OLD."clinic" END, 'fee', CASE WHEN typeof(OLD."fee") = 'blob' THEN hex(OLD."fee") ELSE OLD."fee" END), json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END, 'clinic', CASE WHEN typeof(NEW."clinic") = 'blob' THEN hex(NEW."clinic") ELSE NEW."clinic" END, 'fee', CASE WHEN typeof(NEW."fee") = 'blob' THEN hex(NEW."fee") ELSE NEW."fee" END), NULL);
END;

CREATE TRIGGER "lockstep_appointments_updk" AFTER UPDATE ON "appointments" WHEN NOT (OLD."id" IS NEW."id" COLLATE BINARY) BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('appointments', 'd', json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END), json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END, 'clinic', CASE WHEN typeof(OLD."clinic") = 'blob' THEN hex(OLD."clinic") ELSE OLD."clinic" END, 'fee', CASE WHEN typeof(OLD."fee") = 'blob' THEN hex(OLD."fee") ELSE OLD."fee" END), NULL);
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('appointments', 'c', json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END), json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END, 'clinic', CASE WHEN typeof(NEW."clinic") = 'blob' THEN hex(NEW."clinic") ELSE NEW."clinic" END, 'fee', CASE WHEN typeof(NEW."fee") = 'blob' THEN hex(NEW."fee") ELSE NEW."fee" END), NULL);
END;

CREATE TRIGGER "lockstep_appointments_del" AFTER DELETE ON "appointments" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('appointments', 'd', json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END), json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END, 'clinic', CASE WHEN typeof(OLD."clinic") = 'blob' THEN hex(OLD."clinic") ELSE OLD."clinic" END, 'fee', CASE WHEN typeof(OLD."fee") = 'blob' THEN hex(OLD."fee") ELSE OLD."fee" END), NULL);
END;

DROP TRIGGER IF EXISTS "lockstep_clinics_ins";

DROP TRIGGER IF EXISTS "lockstep_clinics_upd";

DROP TRIGGER IF EXISTS "lockstep_clinics_updk";

DROP TRIGGER IF EXISTS "lockstep_clinics_del";

CREATE TRIGGER "lockstep_clinics_ins" AFTER INSERT ON "clinics" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('clinics', 'c', json_object('region', CASE WHEN typeof(NEW."region") = 'blob' THEN hex(NEW."region") ELSE NEW."region" END, 'code', CASE WHEN typeof(NEW."code") = 'blob' THEN hex(NEW."code") ELSE NEW."code" END), json_object('region', CASE WHEN typeof(NEW."region") = 'blob' THEN hex(NEW."region") ELSE NEW."region" END, 'code', CASE WHEN typeof(NEW."code") = 'blob' THEN hex(NEW."code") ELSE NEW."code" END, 'name', CASE WHEN typeof(NEW."name") = 'blob' THEN hex(NEW."name") ELSE NEW."name" END), NULL);
END;

CREATE TRIGGER "lockstep_clinics_upd" AFTER UPDATE ON "clinics" WHEN OLD."region" IS NEW."region" COLLATE BINARY AND OLD."code" IS NEW."code" COLLATE BINARY BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('clinics', 'u', json_object('region', CASE WHEN typeof(NEW."region") = 'blob' THEN hex(NEW."region") ELSE NEW."region" END, 'code', CASE WHEN typeof(NEW."code") = 'blob' THEN hex(NEW."code") ELSE NEW."code" END), json_object('region', CASE WHEN typeof(OLD."region") = 'blob' THEN hex(OLD."region") ELSE OLD."region" END, 'code', CASE WHEN typeof(OLD."code") = 'blob' THEN hex(OLD."code") ELSE OLD."code" END, 'name', CASE WHEN typeof(OLD."name") = 'blob' THEN hex(OLD."name") ELSE OLD."name" END), json_object('region', CASE WHEN typeof(NEW."region") = 'blob' THEN hex(NEW."region") ELSE NEW."region" END, 'code', CASE WHEN typeof(NEW."code") = 'blob' THEN hex(NEW."code") ELSE NEW."code" END, 'name', CASE WHEN typeof(NEW."name") = 'blob' THEN hex(NEW."name") ELSE NEW."name" END), NULL);
END;

CREATE TRIGGER "lockstep_clinics_updk" AFTER UPDATE ON "clinics" WHEN NOT (OLD."region" IS NEW."region" COLLATE BINARY AND OLD."code" IS NEW."code" COLLATE BINARY) BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('clinics', 'd', json_object('region', CASE WHEN typeof(OLD."region") = 'blob' THEN hex(OLD."region") ELSE OLD."region" END, 'code', CASE WHEN typeof(OLD."code") = 'blob' THEN hex(OLD."code") ELSE OLD."code" END), json_object('region', CASE WHEN typeof(OLD."region") = 'blob' THEN hex(OLD."region") ELSE OLD."region" END, 'code', CASE WHEN typeof(OLD."code") = 'blob' THEN hex(OLD."code") ELSE OLD."code" END, 'name', CASE WHEN typeof(OLD."name") = 'blob' THEN hex(OLD."name") ELSE OLD."name" END), NULL);
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('clinics', 'c', json_object('region', CASE WHEN typeof(NEW."region") = 'blob' THEN hex(NEW."region") ELSE NEW."region" END, 'code', CASE WHEN typeof(NEW."code") = 'blob' THEN hex(NEW."code") ELSE NEW."code" END), json_object('region', CASE WHEN typeof(NEW."region") = 'blob' THEN hex(NEW."region") ELSE NEW."region" END, 'code', CASE WHEN typeof(NEW."code") = 'blob' THEN hex(NEW."code") ELSE NEW."code" END, 'name', CASE WHEN typeof(NEW."name") = 'blob' THEN hex(NEW."name") ELSE NEW."name" END), NULL);
END;

CREATE TRIGGER "lockstep_clinics_del" AFTER DELETE ON "clinics" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('clinics', 'd', json_object('region', CASE WHEN typeof(OLD."region") = 'blob' THEN hex(OLD."region") ELSE OLD."region" END, 'code', CASE WHEN typeof(OLD."code") = 'blob' THEN hex(OLD."code") ELSE OLD."code" END), json_object('region', CASE WHEN typeof(OLD."region") = 'blob' THEN hex(OLD."region") ELSE OLD."region" END, 'code', CASE WHEN typeof(OLD."code") = 'blob' THEN hex(OLD."code") ELSE OLD."code" END, 'name', CASE WHEN typeof(OLD."name") = 'blob' THEN hex(OLD."name") ELSE OLD."name" END), NULL);
END;

DROP TRIGGER IF EXISTS "lockstep_scans_ins";

DROP TRIGGER IF EXISTS "lockstep_scans_upd";

DROP TRIGGER IF EXISTS "lockstep_scans_updk";

DROP TRIGGER IF EXISTS "lockstep_scans_del";

CREATE TRIGGER "lockstep_scans_ins" AFTER INSERT ON "scans" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('scans', 'c', json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END), json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END, 'image', CASE WHEN typeof(NEW."image") = 'blob' THEN hex(NEW."image") ELSE NEW."image" END), NULL);
END;

CREATE TRIGGER "lockstep_scans_upd" AFTER UPDATE ON "scans" WHEN OLD."id" IS NEW."id" COLLATE BINARY BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('scans', 'u', json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END), json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END, 'image', CASE WHEN typeof(OLD."image") = 'blob' THEN hex(OLD."image") ELSE OLD."image" END), json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END, 'image', CASE WHEN typeof(NEW."image") = 'blob' THEN hex(NEW."image") ELSE NEW."image" END), NULL);
END;

CREATE TRIGGER "lockstep_scans_updk" AFTER UPDATE ON "scans" WHEN NOT (OLD."id" IS NEW."id" COLLATE BINARY) BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('scans', 'd', json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END), json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END, 'image', CASE WHEN typeof(OLD."image") = 'blob' THEN hex(OLD."image") ELSE OLD."image" END), NULL);
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('scans', 'c', json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END), json_object('id', CASE WHEN typeof(NEW."id") = 'blob' THEN hex(NEW."id") ELSE NEW."id" END, 'image', CASE WHEN typeof(NEW."image") = 'blob' THEN hex(NEW."image") ELSE NEW."image" END), NULL);
END;

CREATE TRIGGER "lockstep_scans_del" AFTER DELETE ON "scans" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('scans', 'd', json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END), json_object('id', CASE WHEN typeof(OLD."id") = 'blob' THEN hex(OLD."id") ELSE OLD."id" END, 'image', CASE WHEN typeof(OLD."image") = 'blob' THEN hex(OLD."image") ELSE OLD."image" END), NULL);
END;

COMMIT;
-- lockstep triggers uninstall

DROP TRIGGER IF EXISTS "lockstep_appointments_ins";

DROP TRIGGER IF EXISTS "lockstep_appointments_upd";

DROP TRIGGER IF EXISTS "lockstep_appointments_updk";

DROP TRIGGER IF EXISTS "lockstep_appointments_del";

DROP TRIGGER IF EXISTS "lockstep_clinics_ins";

DROP TRIGGER IF EXISTS "lockstep_clinics_upd";

DROP TRIGGER IF EXISTS "lockstep_clinics_updk";

DROP TRIGGER IF EXISTS "lockstep_clinics_del";

DROP TRIGGER IF EXISTS "lockstep_scans_ins";

DROP TRIGGER IF EXISTS "lockstep_scans_upd";

DROP TRIGGER IF EXISTS "lockstep_scans_updk";

DROP TRIGGER IF EXISTS "lockstep_scans_del";

-- then, only when this counts no trigger left (of any source):
-- SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'lockstep!_%' ESCAPE '!'

DROP TABLE IF EXISTS "lockstep_changes";


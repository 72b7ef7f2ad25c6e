-- lockstep triggers install (sqlite, capture = "keys")

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
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('appointments', 'c', json_object('id', NEW."id"), NULL, NULL);
END;

CREATE TRIGGER "lockstep_appointments_upd" AFTER UPDATE ON "appointments" WHEN OLD."id" IS NEW."id" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('appointments', 'u', json_object('id', NEW."id"), NULL, NULL, NULL);
END;

CREATE TRIGGER "lockstep_appointments_updk" AFTER UPDATE ON "appointments" WHEN NOT (OLD."id" IS NEW."id") BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('appointments', 'd', json_object('id', OLD."id"), NULL, NULL);
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('appointments', 'c', json_object('id', NEW."id"), NULL, NULL);
END;

CREATE TRIGGER "lockstep_appointments_del" AFTER DELETE ON "appointments" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('appointments', 'd', json_object('id', OLD."id"), NULL, NULL);
END;

DROP TRIGGER IF EXISTS "lockstep_clinics_ins";

DROP TRIGGER IF EXISTS "lockstep_clinics_upd";

DROP TRIGGER IF EXISTS "lockstep_clinics_updk";

DROP TRIGGER IF EXISTS "lockstep_clinics_del";

CREATE TRIGGER "lockstep_clinics_ins" AFTER INSERT ON "clinics" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('clinics', 'c', json_object('region', NEW."region", 'code', NEW."code"), NULL, NULL);
END;

CREATE TRIGGER "lockstep_clinics_upd" AFTER UPDATE ON "clinics" WHEN OLD."region" IS NEW."region" AND OLD."code" IS NEW."code" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('clinics', 'u', json_object('region', NEW."region", 'code', NEW."code"), NULL, NULL, NULL);
END;

CREATE TRIGGER "lockstep_clinics_updk" AFTER UPDATE ON "clinics" WHEN NOT (OLD."region" IS NEW."region" AND OLD."code" IS NEW."code") BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('clinics', 'd', json_object('region', OLD."region", 'code', OLD."code"), NULL, NULL);
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('clinics', 'c', json_object('region', NEW."region", 'code', NEW."code"), NULL, NULL);
END;

CREATE TRIGGER "lockstep_clinics_del" AFTER DELETE ON "clinics" BEGIN
    INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('clinics', 'd', json_object('region', OLD."region", 'code', OLD."code"), NULL, NULL);
END;

-- lockstep triggers uninstall

DROP TRIGGER IF EXISTS "lockstep_appointments_ins";

DROP TRIGGER IF EXISTS "lockstep_appointments_upd";

DROP TRIGGER IF EXISTS "lockstep_appointments_updk";

DROP TRIGGER IF EXISTS "lockstep_appointments_del";

DROP TRIGGER IF EXISTS "lockstep_clinics_ins";

DROP TRIGGER IF EXISTS "lockstep_clinics_upd";

DROP TRIGGER IF EXISTS "lockstep_clinics_updk";

DROP TRIGGER IF EXISTS "lockstep_clinics_del";

DROP TABLE IF EXISTS "lockstep_changes";


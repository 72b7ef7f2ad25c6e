-- lockstep triggers install (db2, capture = "rows")

CREATE TABLE IF NOT EXISTS "lockstep_changes" (
    "seq" BIGINT NOT NULL GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "tbl" VARCHAR(128) NOT NULL,
    "op" CHAR(1) NOT NULL,
    "pk" CLOB(1M) NOT NULL,
    "before" CLOB(16M),
    "after" CLOB(16M),
    "changed_at" TIMESTAMP(6) NOT NULL DEFAULT CURRENT TIMESTAMP,
    "origin" VARCHAR(64)
);

CREATE OR REPLACE TRIGGER "lockstep_appointments_ins" AFTER INSERT ON "appointments" REFERENCING NEW AS N FOR EACH ROW
INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('appointments', 'c', JSON_OBJECT(KEY 'id' VALUE N."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE N."id", KEY 'clinic' VALUE N."clinic", KEY 'fee' VALUE N."fee" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);

--#SET TERMINATOR @
CREATE OR REPLACE TRIGGER "lockstep_appointments_upd" AFTER UPDATE ON "appointments" REFERENCING OLD AS O NEW AS N FOR EACH ROW
BEGIN ATOMIC
    IF O."id" IS NOT DISTINCT FROM N."id" THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('appointments', 'u', JSON_OBJECT(KEY 'id' VALUE N."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE O."id", KEY 'clinic' VALUE O."clinic", KEY 'fee' VALUE O."fee" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE N."id", KEY 'clinic' VALUE N."clinic", KEY 'fee' VALUE N."fee" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);
    ELSE
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('appointments', 'd', JSON_OBJECT(KEY 'id' VALUE O."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE O."id", KEY 'clinic' VALUE O."clinic", KEY 'fee' VALUE O."fee" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('appointments', 'c', JSON_OBJECT(KEY 'id' VALUE N."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE N."id", KEY 'clinic' VALUE N."clinic", KEY 'fee' VALUE N."fee" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);
    END IF;
END@
--#SET TERMINATOR ;

CREATE OR REPLACE TRIGGER "lockstep_appointments_del" AFTER DELETE ON "appointments" REFERENCING OLD AS O FOR EACH ROW
INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('appointments', 'd', JSON_OBJECT(KEY 'id' VALUE O."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE O."id", KEY 'clinic' VALUE O."clinic", KEY 'fee' VALUE O."fee" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);

CREATE OR REPLACE TRIGGER "lockstep_clinics_ins" AFTER INSERT ON "clinics" REFERENCING NEW AS N FOR EACH ROW
INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('clinics', 'c', JSON_OBJECT(KEY 'region' VALUE N."region", KEY 'code' VALUE N."code" NULL ON NULL), JSON_OBJECT(KEY 'region' VALUE N."region", KEY 'code' VALUE N."code", KEY 'name' VALUE N."name" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);

--#SET TERMINATOR @
CREATE OR REPLACE TRIGGER "lockstep_clinics_upd" AFTER UPDATE ON "clinics" REFERENCING OLD AS O NEW AS N FOR EACH ROW
BEGIN ATOMIC
    IF O."region" IS NOT DISTINCT FROM N."region" AND O."code" IS NOT DISTINCT FROM N."code" THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('clinics', 'u', JSON_OBJECT(KEY 'region' VALUE N."region", KEY 'code' VALUE N."code" NULL ON NULL), JSON_OBJECT(KEY 'region' VALUE O."region", KEY 'code' VALUE O."code", KEY 'name' VALUE O."name" NULL ON NULL), JSON_OBJECT(KEY 'region' VALUE N."region", KEY 'code' VALUE N."code", KEY 'name' VALUE N."name" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);
    ELSE
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('clinics', 'd', JSON_OBJECT(KEY 'region' VALUE O."region", KEY 'code' VALUE O."code" NULL ON NULL), JSON_OBJECT(KEY 'region' VALUE O."region", KEY 'code' VALUE O."code", KEY 'name' VALUE O."name" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('clinics', 'c', JSON_OBJECT(KEY 'region' VALUE N."region", KEY 'code' VALUE N."code" NULL ON NULL), JSON_OBJECT(KEY 'region' VALUE N."region", KEY 'code' VALUE N."code", KEY 'name' VALUE N."name" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);
    END IF;
END@
--#SET TERMINATOR ;

CREATE OR REPLACE TRIGGER "lockstep_clinics_del" AFTER DELETE ON "clinics" REFERENCING OLD AS O FOR EACH ROW
INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('clinics', 'd', JSON_OBJECT(KEY 'region' VALUE O."region", KEY 'code' VALUE O."code" NULL ON NULL), JSON_OBJECT(KEY 'region' VALUE O."region", KEY 'code' VALUE O."code", KEY 'name' VALUE O."name" NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);

CREATE OR REPLACE TRIGGER "lockstep_scans_ins" AFTER INSERT ON "scans" REFERENCING NEW AS N FOR EACH ROW
INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('scans', 'c', JSON_OBJECT(KEY 'id' VALUE N."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE N."id", KEY 'image' VALUE HEX(N."image") NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);

--#SET TERMINATOR @
CREATE OR REPLACE TRIGGER "lockstep_scans_upd" AFTER UPDATE ON "scans" REFERENCING OLD AS O NEW AS N FOR EACH ROW
BEGIN ATOMIC
    IF O."id" IS NOT DISTINCT FROM N."id" THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('scans', 'u', JSON_OBJECT(KEY 'id' VALUE N."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE O."id", KEY 'image' VALUE HEX(O."image") NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE N."id", KEY 'image' VALUE HEX(N."image") NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);
    ELSE
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('scans', 'd', JSON_OBJECT(KEY 'id' VALUE O."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE O."id", KEY 'image' VALUE HEX(O."image") NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('scans', 'c', JSON_OBJECT(KEY 'id' VALUE N."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE N."id", KEY 'image' VALUE HEX(N."image") NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);
    END IF;
END@
--#SET TERMINATOR ;

CREATE OR REPLACE TRIGGER "lockstep_scans_del" AFTER DELETE ON "scans" REFERENCING OLD AS O FOR EACH ROW
INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('scans', 'd', JSON_OBJECT(KEY 'id' VALUE O."id" NULL ON NULL), JSON_OBJECT(KEY 'id' VALUE O."id", KEY 'image' VALUE HEX(O."image") NULL ON NULL), CASE WHEN CURRENT CLIENT_APPLNAME LIKE 'lockstep%' THEN CURRENT CLIENT_APPLNAME END);

-- lockstep triggers uninstall

DROP TRIGGER IF EXISTS "lockstep_appointments_ins";

DROP TRIGGER IF EXISTS "lockstep_appointments_upd";

DROP TRIGGER IF EXISTS "lockstep_appointments_del";

DROP TRIGGER IF EXISTS "lockstep_clinics_ins";

DROP TRIGGER IF EXISTS "lockstep_clinics_upd";

DROP TRIGGER IF EXISTS "lockstep_clinics_del";

DROP TRIGGER IF EXISTS "lockstep_scans_ins";

DROP TRIGGER IF EXISTS "lockstep_scans_upd";

DROP TRIGGER IF EXISTS "lockstep_scans_del";

-- then, only when this counts no trigger left (of any source):
-- SELECT count(*) FROM SYSCAT.TRIGGERS WHERE TRIGSCHEMA = CURRENT SCHEMA AND TRIGNAME LIKE 'lockstep!_%' ESCAPE '!'

DROP TABLE IF EXISTS "lockstep_changes";


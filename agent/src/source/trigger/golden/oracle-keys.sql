-- lockstep triggers install (oracle, capture = "keys")

DECLARE
    n NUMBER;
BEGIN
    SELECT COUNT(*) INTO n FROM user_tables WHERE table_name = 'lockstep_changes';
    IF n = 0 THEN
        EXECUTE IMMEDIATE 'CREATE TABLE "lockstep_changes" (
            "seq" NUMBER(19) GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            "tbl" VARCHAR2(128) NOT NULL,
            "op" CHAR(1) NOT NULL,
            "pk" CLOB NOT NULL,
            "before" CLOB,
            "after" CLOB,
            "changed_at" TIMESTAMP(6) DEFAULT SYSTIMESTAMP NOT NULL,
            "origin" VARCHAR2(64)
        )';
    END IF;
END;
/

CREATE OR REPLACE TRIGGER "lockstep_appointments" AFTER INSERT OR UPDATE OR DELETE ON "appointments" FOR EACH ROW
DECLARE
    origin VARCHAR2(64) := SYS_CONTEXT('CLIENTCONTEXT', 'lockstep_origin');
BEGIN
    IF INSERTING THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('appointments', 'c', JSON_OBJECT('id' VALUE :NEW."id" NULL ON NULL), NULL, origin);
    ELSIF DELETING THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('appointments', 'd', JSON_OBJECT('id' VALUE :OLD."id" NULL ON NULL), NULL, origin);
    ELSIF (:OLD."id" = :NEW."id" OR (:OLD."id" IS NULL AND :NEW."id" IS NULL)) THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('appointments', 'u', JSON_OBJECT('id' VALUE :NEW."id" NULL ON NULL), NULL, NULL, origin);
    ELSE
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('appointments', 'd', JSON_OBJECT('id' VALUE :OLD."id" NULL ON NULL), NULL, origin);
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('appointments', 'c', JSON_OBJECT('id' VALUE :NEW."id" NULL ON NULL), NULL, origin);
    END IF;
END;
/

CREATE OR REPLACE TRIGGER "lockstep_clinics" AFTER INSERT OR UPDATE OR DELETE ON "clinics" FOR EACH ROW
DECLARE
    origin VARCHAR2(64) := SYS_CONTEXT('CLIENTCONTEXT', 'lockstep_origin');
BEGIN
    IF INSERTING THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('clinics', 'c', JSON_OBJECT('region' VALUE :NEW."region", 'code' VALUE :NEW."code" NULL ON NULL), NULL, origin);
    ELSIF DELETING THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('clinics', 'd', JSON_OBJECT('region' VALUE :OLD."region", 'code' VALUE :OLD."code" NULL ON NULL), NULL, origin);
    ELSIF (:OLD."region" = :NEW."region" OR (:OLD."region" IS NULL AND :NEW."region" IS NULL)) AND (:OLD."code" = :NEW."code" OR (:OLD."code" IS NULL AND :NEW."code" IS NULL)) THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('clinics', 'u', JSON_OBJECT('region' VALUE :NEW."region", 'code' VALUE :NEW."code" NULL ON NULL), NULL, NULL, origin);
    ELSE
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('clinics', 'd', JSON_OBJECT('region' VALUE :OLD."region", 'code' VALUE :OLD."code" NULL ON NULL), NULL, origin);
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('clinics', 'c', JSON_OBJECT('region' VALUE :NEW."region", 'code' VALUE :NEW."code" NULL ON NULL), NULL, origin);
    END IF;
END;
/

CREATE OR REPLACE TRIGGER "lockstep_scans" AFTER INSERT OR UPDATE OR DELETE ON "scans" FOR EACH ROW
DECLARE
    origin VARCHAR2(64) := SYS_CONTEXT('CLIENTCONTEXT', 'lockstep_origin');
BEGIN
    IF INSERTING THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('scans', 'c', JSON_OBJECT('id' VALUE :NEW."id" NULL ON NULL), NULL, origin);
    ELSIF DELETING THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('scans', 'd', JSON_OBJECT('id' VALUE :OLD."id" NULL ON NULL), NULL, origin);
    ELSIF (:OLD."id" = :NEW."id" OR (:OLD."id" IS NULL AND :NEW."id" IS NULL)) THEN
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "after", "origin") VALUES ('scans', 'u', JSON_OBJECT('id' VALUE :NEW."id" NULL ON NULL), NULL, NULL, origin);
    ELSE
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "before", "origin") VALUES ('scans', 'd', JSON_OBJECT('id' VALUE :OLD."id" NULL ON NULL), NULL, origin);
        INSERT INTO "lockstep_changes" ("tbl", "op", "pk", "after", "origin") VALUES ('scans', 'c', JSON_OBJECT('id' VALUE :NEW."id" NULL ON NULL), NULL, origin);
    END IF;
END;
/

-- lockstep triggers uninstall

BEGIN
    EXECUTE IMMEDIATE 'DROP TRIGGER "lockstep_appointments"';
EXCEPTION
    WHEN OTHERS THEN IF SQLCODE <> -4080 THEN RAISE; END IF;
END;
/

BEGIN
    EXECUTE IMMEDIATE 'DROP TRIGGER "lockstep_clinics"';
EXCEPTION
    WHEN OTHERS THEN IF SQLCODE <> -4080 THEN RAISE; END IF;
END;
/

BEGIN
    EXECUTE IMMEDIATE 'DROP TRIGGER "lockstep_scans"';
EXCEPTION
    WHEN OTHERS THEN IF SQLCODE <> -4080 THEN RAISE; END IF;
END;
/

-- then, only when this counts no trigger left (of any source):
-- SELECT count(*) FROM user_triggers WHERE trigger_name LIKE 'lockstep!_%' ESCAPE '!'

BEGIN
    EXECUTE IMMEDIATE 'DROP TABLE "lockstep_changes"';
EXCEPTION
    WHEN OTHERS THEN IF SQLCODE <> -942 THEN RAISE; END IF;
END;
/


-- lockstep triggers install (mariadb, capture = "keys")

SET SESSION lock_wait_timeout = 10;

CREATE TABLE IF NOT EXISTS `lockstep_changes` (
    `seq` BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    `tbl` VARCHAR(128) NOT NULL,
    `op` CHAR(1) NOT NULL,
    `pk` LONGTEXT NOT NULL,
    `before` LONGTEXT NULL,
    `after` LONGTEXT NULL,
    `changed_at` TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    `origin` VARCHAR(64) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE OR REPLACE TRIGGER `lockstep_appointments_ins` AFTER INSERT ON `appointments` FOR EACH ROW
INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `after`, `origin`) VALUES ('appointments', 'c', JSON_OBJECT('id', NEW.`id`), NULL, @lockstep_origin);

DELIMITER $$
CREATE OR REPLACE TRIGGER `lockstep_appointments_upd` AFTER UPDATE ON `appointments` FOR EACH ROW
BEGIN
    IF CAST(OLD.`id` AS BINARY) <=> CAST(NEW.`id` AS BINARY) THEN
        INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `before`, `after`, `origin`) VALUES ('appointments', 'u', JSON_OBJECT('id', NEW.`id`), NULL, NULL, @lockstep_origin);
    ELSE
        INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `before`, `origin`) VALUES ('appointments', 'd', JSON_OBJECT('id', OLD.`id`), NULL, @lockstep_origin);
        INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `after`, `origin`) VALUES ('appointments', 'c', JSON_OBJECT('id', NEW.`id`), NULL, @lockstep_origin);
    END IF;
END$$
DELIMITER ;

CREATE OR REPLACE TRIGGER `lockstep_appointments_del` AFTER DELETE ON `appointments` FOR EACH ROW
INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `before`, `origin`) VALUES ('appointments', 'd', JSON_OBJECT('id', OLD.`id`), NULL, @lockstep_origin);

CREATE OR REPLACE TRIGGER `lockstep_clinics_ins` AFTER INSERT ON `clinics` FOR EACH ROW
INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `after`, `origin`) VALUES ('clinics', 'c', JSON_OBJECT('region', NEW.`region`, 'code', NEW.`code`), NULL, @lockstep_origin);

DELIMITER $$
CREATE OR REPLACE TRIGGER `lockstep_clinics_upd` AFTER UPDATE ON `clinics` FOR EACH ROW
BEGIN
    IF CAST(OLD.`region` AS BINARY) <=> CAST(NEW.`region` AS BINARY) AND CAST(OLD.`code` AS BINARY) <=> CAST(NEW.`code` AS BINARY) THEN
        INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `before`, `after`, `origin`) VALUES ('clinics', 'u', JSON_OBJECT('region', NEW.`region`, 'code', NEW.`code`), NULL, NULL, @lockstep_origin);
    ELSE
        INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `before`, `origin`) VALUES ('clinics', 'd', JSON_OBJECT('region', OLD.`region`, 'code', OLD.`code`), NULL, @lockstep_origin);
        INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `after`, `origin`) VALUES ('clinics', 'c', JSON_OBJECT('region', NEW.`region`, 'code', NEW.`code`), NULL, @lockstep_origin);
    END IF;
END$$
DELIMITER ;

CREATE OR REPLACE TRIGGER `lockstep_clinics_del` AFTER DELETE ON `clinics` FOR EACH ROW
INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `before`, `origin`) VALUES ('clinics', 'd', JSON_OBJECT('region', OLD.`region`, 'code', OLD.`code`), NULL, @lockstep_origin);

CREATE OR REPLACE TRIGGER `lockstep_scans_ins` AFTER INSERT ON `scans` FOR EACH ROW
INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `after`, `origin`) VALUES ('scans', 'c', JSON_OBJECT('id', NEW.`id`), NULL, @lockstep_origin);

DELIMITER $$
CREATE OR REPLACE TRIGGER `lockstep_scans_upd` AFTER UPDATE ON `scans` FOR EACH ROW
BEGIN
    IF CAST(OLD.`id` AS BINARY) <=> CAST(NEW.`id` AS BINARY) THEN
        INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `before`, `after`, `origin`) VALUES ('scans', 'u', JSON_OBJECT('id', NEW.`id`), NULL, NULL, @lockstep_origin);
    ELSE
        INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `before`, `origin`) VALUES ('scans', 'd', JSON_OBJECT('id', OLD.`id`), NULL, @lockstep_origin);
        INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `after`, `origin`) VALUES ('scans', 'c', JSON_OBJECT('id', NEW.`id`), NULL, @lockstep_origin);
    END IF;
END$$
DELIMITER ;

CREATE OR REPLACE TRIGGER `lockstep_scans_del` AFTER DELETE ON `scans` FOR EACH ROW
INSERT INTO `lockstep_changes` (`tbl`, `op`, `pk`, `before`, `origin`) VALUES ('scans', 'd', JSON_OBJECT('id', OLD.`id`), NULL, @lockstep_origin);

-- lockstep triggers uninstall

DROP TRIGGER IF EXISTS `lockstep_appointments_ins`;

DROP TRIGGER IF EXISTS `lockstep_appointments_upd`;

DROP TRIGGER IF EXISTS `lockstep_appointments_del`;

DROP TRIGGER IF EXISTS `lockstep_clinics_ins`;

DROP TRIGGER IF EXISTS `lockstep_clinics_upd`;

DROP TRIGGER IF EXISTS `lockstep_clinics_del`;

DROP TRIGGER IF EXISTS `lockstep_scans_ins`;

DROP TRIGGER IF EXISTS `lockstep_scans_upd`;

DROP TRIGGER IF EXISTS `lockstep_scans_del`;

-- then, only when this counts no trigger left (of any source):
-- SELECT count(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE 'lockstep!_%' ESCAPE '!'

DROP TABLE IF EXISTS `lockstep_changes`;


-- tablemq schema v2 (MySQL 8 / MariaDB 10.6+): bounded memory, paging and large messages.
-- MySQL 8 has no ADD COLUMN IF NOT EXISTS: each column and index is added by a prepared
-- statement chosen from information_schema, so the file stays idempotent like v1 (DDL
-- commits on its own in MySQL, so a dirty version is repaired by running it again).
-- GET_LOCK in the runner keeps two brokers from running it at once.

-- Messages: the body size (counted by the counters) and the large flag (the body lives
-- in chunks of the large-messages table). One index serves both delivery lanes.
SET @tmq_ddl := (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {{.Messages}} ADD COLUMN size BIGINT NOT NULL DEFAULT 0', 'DO 0')
    FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{{.Messages}}' AND column_name = 'size');
PREPARE tmq_ddl FROM @tmq_ddl;
EXECUTE tmq_ddl;
DEALLOCATE PREPARE tmq_ddl;
SET @tmq_ddl := (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {{.Messages}} ADD COLUMN large TINYINT NOT NULL DEFAULT 0', 'DO 0')
    FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{{.Messages}}' AND column_name = 'large');
PREPARE tmq_ddl FROM @tmq_ddl;
EXECUTE tmq_ddl;
DEALLOCATE PREPARE tmq_ddl;
UPDATE {{.Messages}} SET size = LENGTH(body) WHERE size = 0 AND large = 0 AND LENGTH(body) > 0;
SET @tmq_ddl := (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {{.Messages}} ADD INDEX {{.Messages}}_lane_idx (queue, deliver_at, priority DESC, id)', 'DO 0')
    FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = '{{.Messages}}' AND index_name = '{{.Messages}}_lane_idx');
PREPARE tmq_ddl FROM @tmq_ddl;
EXECUTE tmq_ddl;
DEALLOCATE PREPARE tmq_ddl;

-- Pages: the address-level page logs (column address holds the log name).
SET @tmq_ddl := (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {{.Pages}} ADD COLUMN deliver_at BIGINT NOT NULL DEFAULT 0', 'DO 0')
    FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{{.Pages}}' AND column_name = 'deliver_at');
PREPARE tmq_ddl FROM @tmq_ddl;
EXECUTE tmq_ddl;
DEALLOCATE PREPARE tmq_ddl;
SET @tmq_ddl := (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {{.Pages}} ADD COLUMN size BIGINT NOT NULL DEFAULT 0', 'DO 0')
    FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{{.Pages}}' AND column_name = 'size');
PREPARE tmq_ddl FROM @tmq_ddl;
EXECUTE tmq_ddl;
DEALLOCATE PREPARE tmq_ddl;
SET @tmq_ddl := (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {{.Pages}} ADD COLUMN large TINYINT NOT NULL DEFAULT 0', 'DO 0')
    FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{{.Pages}}' AND column_name = 'large');
PREPARE tmq_ddl FROM @tmq_ddl;
EXECUTE tmq_ddl;
DEALLOCATE PREPARE tmq_ddl;
UPDATE {{.Pages}} SET size = LENGTH(body) WHERE size = 0 AND large = 0 AND LENGTH(body) > 0;

-- Large messages: chunk 0 holds the number of message and page rows naming the
-- message; 0 while an upload is in progress or was abandoned. MySQL has no partial
-- index: the sweep reads (chunk_no = 0, refs <= 0) as a range of this one.
SET @tmq_ddl := (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {{.LargeMessages}} ADD COLUMN refs BIGINT NOT NULL DEFAULT 0', 'DO 0')
    FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = '{{.LargeMessages}}' AND column_name = 'refs');
PREPARE tmq_ddl FROM @tmq_ddl;
EXECUTE tmq_ddl;
DEALLOCATE PREPARE tmq_ddl;
SET @tmq_ddl := (SELECT IF(COUNT(*) = 0, 'ALTER TABLE {{.LargeMessages}} ADD INDEX {{.LargeMessages}}_unref_idx (chunk_no, refs, message_id)', 'DO 0')
    FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name = '{{.LargeMessages}}' AND index_name = '{{.LargeMessages}}_unref_idx');
PREPARE tmq_ddl FROM @tmq_ddl;
EXECUTE tmq_ddl;
DEALLOCATE PREPARE tmq_ddl;

-- Counters: messages and bytes per queue and per page log, one row per slot.
CREATE TABLE IF NOT EXISTS {{.Counters}} (
    kind     VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name     VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    slot     SMALLINT     NOT NULL,
    messages BIGINT       NOT NULL DEFAULT 0,
    bytes    BIGINT       NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name, slot)
) ENGINE=InnoDB;
-- Backfill from the messages already stored, once (a table with rows was filled before).
INSERT IGNORE INTO {{.Counters}} (kind, name, slot, messages, bytes)
SELECT 'queue', queue, 0, COUNT(*), COALESCE(SUM(size), 0) FROM {{.Messages}}
WHERE NOT EXISTS (SELECT 1 FROM {{.Counters}})
GROUP BY queue;

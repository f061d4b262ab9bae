-- tablemq schema v2 (SQLite): bounded memory, paging and large messages.
-- SQLite has no ADD COLUMN IF NOT EXISTS: the migration runner skips an
-- "ALTER TABLE t ADD COLUMN c" whose column exists (see sqliteGuard in migrations.go),
-- which keeps this file idempotent like v1. Each statement ends with ";" at the end of
-- a line.

-- Messages: the body size (counted by the counters) and the large flag (the body lives
-- in chunks of the large-messages table). One index serves both delivery lanes.
ALTER TABLE {{.Messages}} ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {{.Messages}} ADD COLUMN large INTEGER NOT NULL DEFAULT 0;
UPDATE {{.Messages}} SET size = length(body) WHERE size = 0 AND large = 0 AND length(body) > 0;
CREATE INDEX IF NOT EXISTS {{.Messages}}_lane_idx ON {{.Messages}} (queue, deliver_at, priority DESC, id);

-- Pages: the address-level page logs (column address holds the log name).
ALTER TABLE {{.Pages}} ADD COLUMN deliver_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {{.Pages}} ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {{.Pages}} ADD COLUMN large INTEGER NOT NULL DEFAULT 0;
UPDATE {{.Pages}} SET size = length(body) WHERE size = 0 AND large = 0 AND length(body) > 0;

-- Large messages: chunk 0 holds the number of message and page rows naming the
-- message; 0 while an upload is in progress or was abandoned (partial index for the
-- sweep).
ALTER TABLE {{.LargeMessages}} ADD COLUMN refs INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS {{.LargeMessages}}_unref_idx ON {{.LargeMessages}} (message_id) WHERE chunk_no = 0 AND refs <= 0;

-- Counters: messages and bytes per queue and per page log, one row per slot.
CREATE TABLE IF NOT EXISTS {{.Counters}} (
    kind     TEXT    NOT NULL,
    name     TEXT    NOT NULL,
    slot     INTEGER NOT NULL,
    messages INTEGER NOT NULL DEFAULT 0,
    bytes    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name, slot)
);
-- Backfill from the messages already stored, once (a table with rows was filled before).
INSERT OR IGNORE INTO {{.Counters}} (kind, name, slot, messages, bytes)
SELECT 'queue', queue, 0, count(*), coalesce(sum(size), 0) FROM {{.Messages}}
WHERE NOT EXISTS (SELECT 1 FROM {{.Counters}})
GROUP BY queue;

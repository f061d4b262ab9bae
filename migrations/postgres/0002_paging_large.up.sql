-- tablemq schema v2 (PostgreSQL): bounded memory, paging and large messages.
-- Idempotent like v1 (ADD COLUMN / CREATE ... IF NOT EXISTS, guarded backfills), and run
-- as one implicit transaction by the migration runner, so a failure leaves nothing half
-- done and a dirty version can simply be run again.

-- Messages: the body size (counted by the counters) and the large flag (the body lives
-- in chunks of the large-messages table). One index serves both delivery lanes: ready
-- (deliver_at = 0, priority DESC, id) and scheduled (deliver_at > 0, deliver_at,
-- priority DESC, id).
ALTER TABLE {{.Messages}} ADD COLUMN IF NOT EXISTS size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {{.Messages}} ADD COLUMN IF NOT EXISTS large SMALLINT NOT NULL DEFAULT 0;
UPDATE {{.Messages}} SET size = octet_length(body) WHERE size = 0 AND large = 0 AND octet_length(body) > 0;
CREATE INDEX IF NOT EXISTS {{.Messages}}_lane_idx ON {{.Messages}} (queue, deliver_at, priority DESC, id);

-- Pages: the address-level page logs (column address holds the log name).
ALTER TABLE {{.Pages}} ADD COLUMN IF NOT EXISTS deliver_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {{.Pages}} ADD COLUMN IF NOT EXISTS size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {{.Pages}} ADD COLUMN IF NOT EXISTS large SMALLINT NOT NULL DEFAULT 0;
UPDATE {{.Pages}} SET size = octet_length(body) WHERE size = 0 AND large = 0 AND octet_length(body) > 0;

-- Large messages: chunk 0 holds the number of message and page rows naming the
-- message. 0 while an upload is in progress (or was abandoned): the sweep of abandoned
-- uploads reads them through a partial index holding only those heads.
ALTER TABLE {{.LargeMessages}} ADD COLUMN IF NOT EXISTS refs BIGINT NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS {{.LargeMessages}}_unref_idx ON {{.LargeMessages}} (message_id) WHERE chunk_no = 0 AND refs <= 0;

-- Counters: messages and bytes per queue (kind 'queue') and per page log (kind
-- 'pages'), one row per slot so that concurrent transactions never wait for each
-- other's row; readers sum the slots.
CREATE TABLE IF NOT EXISTS {{.Counters}} (
    kind     TEXT     NOT NULL,
    name     TEXT     NOT NULL,
    slot     SMALLINT NOT NULL,
    messages BIGINT   NOT NULL DEFAULT 0,
    bytes    BIGINT   NOT NULL DEFAULT 0,
    PRIMARY KEY (kind, name, slot)
);
-- Backfill from the messages already stored, once: a counters table with rows was
-- filled before (by this backfill or by a broker), and counting again would count twice.
INSERT INTO {{.Counters}} (kind, name, slot, messages, bytes)
SELECT 'queue', queue, 0, count(*), coalesce(sum(size), 0) FROM {{.Messages}}
WHERE NOT EXISTS (SELECT 1 FROM {{.Counters}})
GROUP BY queue
ON CONFLICT (kind, name, slot) DO NOTHING;

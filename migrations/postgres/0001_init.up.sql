-- tablemq schema v1 (PostgreSQL). Every statement is idempotent so that two brokers
-- starting at once against an empty database cannot break each other.
-- Times in *_at columns are Unix milliseconds (broker clock) unless named *_us, which are
-- Unix microseconds on the database clock (lease arithmetic only).

CREATE TABLE IF NOT EXISTS {{.Bindings}} (
    kind       TEXT   NOT NULL,            -- 'address', 'queue' or 'binding'
    name       TEXT   NOT NULL,            -- address or queue name
    target     TEXT   NOT NULL DEFAULT '', -- for 'binding': the bound queue; '' otherwise
    config     TEXT   NOT NULL DEFAULT '{}',
    created_at BIGINT NOT NULL,
    PRIMARY KEY (kind, name, target)
);

CREATE TABLE IF NOT EXISTS {{.Messages}} (
    queue          TEXT     NOT NULL,
    id             BIGINT   NOT NULL,      -- epoch in the high bits, counter in the low bits
    priority       SMALLINT NOT NULL DEFAULT 4,
    deliver_at     BIGINT   NOT NULL DEFAULT 0,
    expires_at     BIGINT   NOT NULL DEFAULT 0,
    delivery_count INTEGER  NOT NULL DEFAULT 0,
    created_at     BIGINT   NOT NULL,
    content_type   TEXT     NOT NULL DEFAULT '',
    headers        TEXT     NOT NULL DEFAULT '',
    body           BYTEA    NOT NULL,
    PRIMARY KEY (queue, id)
);

CREATE TABLE IF NOT EXISTS {{.LargeMessages}} (
    message_id BIGINT  NOT NULL,
    chunk_no   INTEGER NOT NULL,
    data       BYTEA   NOT NULL,
    PRIMARY KEY (message_id, chunk_no)
);

CREATE TABLE IF NOT EXISTS {{.Pages}} (
    address      TEXT     NOT NULL,
    id           BIGINT   NOT NULL,
    priority     SMALLINT NOT NULL DEFAULT 4,
    expires_at   BIGINT   NOT NULL DEFAULT 0,
    created_at   BIGINT   NOT NULL,
    content_type TEXT     NOT NULL DEFAULT '',
    headers      TEXT     NOT NULL DEFAULT '',
    body         BYTEA    NOT NULL,
    PRIMARY KEY (address, id)
);

CREATE TABLE IF NOT EXISTS {{.NodeManager}} (
    id          INTEGER      PRIMARY KEY, -- 0 state, 1 live lock, 2 backup lock, 3 node id, 4 fencing epoch
    state       VARCHAR(16)  NOT NULL DEFAULT '',
    holder_id   VARCHAR(128) NOT NULL DEFAULT '',
    holder_name VARCHAR(255) NOT NULL DEFAULT '',
    expires_us  BIGINT       NOT NULL DEFAULT 0,
    epoch       BIGINT       NOT NULL DEFAULT 0,
    node_id     VARCHAR(64)  NOT NULL DEFAULT '',
    updated_us  BIGINT       NOT NULL DEFAULT 0
);
INSERT INTO {{.NodeManager}} (id) VALUES (0), (1), (2), (3), (4) ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS {{.DuplicateIDs}} (
    queue      TEXT   NOT NULL,
    idem_key   TEXT   NOT NULL,
    message_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (queue, idem_key)
);
CREATE INDEX IF NOT EXISTS {{.DuplicateIDs}}_created_idx ON {{.DuplicateIDs}} (created_at);

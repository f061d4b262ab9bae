-- tablemq schema v1 (SQLite). Every statement is idempotent so that two processes
-- starting at once on one file cannot break each other.

CREATE TABLE IF NOT EXISTS {{.Bindings}} (
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    target     TEXT    NOT NULL DEFAULT '',
    config     TEXT    NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    PRIMARY KEY (kind, name, target)
);

CREATE TABLE IF NOT EXISTS {{.Messages}} (
    queue          TEXT    NOT NULL,
    id             INTEGER NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 4,
    deliver_at     INTEGER NOT NULL DEFAULT 0,
    expires_at     INTEGER NOT NULL DEFAULT 0,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    content_type   TEXT    NOT NULL DEFAULT '',
    headers        TEXT    NOT NULL DEFAULT '',
    body           BLOB    NOT NULL,
    PRIMARY KEY (queue, id)
);

CREATE TABLE IF NOT EXISTS {{.LargeMessages}} (
    message_id INTEGER NOT NULL,
    chunk_no   INTEGER NOT NULL,
    data       BLOB    NOT NULL,
    PRIMARY KEY (message_id, chunk_no)
);

CREATE TABLE IF NOT EXISTS {{.Pages}} (
    address      TEXT    NOT NULL,
    id           INTEGER NOT NULL,
    priority     INTEGER NOT NULL DEFAULT 4,
    expires_at   INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    content_type TEXT    NOT NULL DEFAULT '',
    headers      TEXT    NOT NULL DEFAULT '',
    body         BLOB    NOT NULL,
    PRIMARY KEY (address, id)
);

CREATE TABLE IF NOT EXISTS {{.NodeManager}} (
    id          INTEGER PRIMARY KEY,
    state       TEXT    NOT NULL DEFAULT '',
    holder_id   TEXT    NOT NULL DEFAULT '',
    holder_name TEXT    NOT NULL DEFAULT '',
    expires_us  INTEGER NOT NULL DEFAULT 0,
    epoch       INTEGER NOT NULL DEFAULT 0,
    node_id     TEXT    NOT NULL DEFAULT '',
    updated_us  INTEGER NOT NULL DEFAULT 0
);
INSERT OR IGNORE INTO {{.NodeManager}} (id) VALUES (0), (1), (2), (3), (4);

CREATE TABLE IF NOT EXISTS {{.DuplicateIDs}} (
    queue      TEXT    NOT NULL,
    idem_key   TEXT    NOT NULL,
    message_id INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (queue, idem_key)
);
CREATE INDEX IF NOT EXISTS {{.DuplicateIDs}}_created_idx ON {{.DuplicateIDs}} (created_at);

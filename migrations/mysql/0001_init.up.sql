-- tablemq schema v1 (MySQL 8 / MariaDB 10.6+). Every statement is idempotent so that two
-- brokers starting at once against an empty database cannot break each other.
-- Names are ASCII (validated by the broker), compared byte for byte.

CREATE TABLE IF NOT EXISTS {{.Bindings}} (
    kind       VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name       VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    target     VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT '',
    config     MEDIUMTEXT   NOT NULL,
    created_at BIGINT       NOT NULL,
    PRIMARY KEY (kind, name, target)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS {{.Messages}} (
    queue          VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    id             BIGINT       NOT NULL,
    priority       SMALLINT     NOT NULL DEFAULT 4,
    deliver_at     BIGINT       NOT NULL DEFAULT 0,
    expires_at     BIGINT       NOT NULL DEFAULT 0,
    delivery_count INT          NOT NULL DEFAULT 0,
    created_at     BIGINT       NOT NULL,
    content_type   VARCHAR(255) NOT NULL DEFAULT '',
    headers        MEDIUMTEXT   NOT NULL,
    body           LONGBLOB     NOT NULL,
    PRIMARY KEY (queue, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS {{.LargeMessages}} (
    message_id BIGINT   NOT NULL,
    chunk_no   INT      NOT NULL,
    data       LONGBLOB NOT NULL,
    PRIMARY KEY (message_id, chunk_no)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS {{.Pages}} (
    address      VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    id           BIGINT       NOT NULL,
    priority     SMALLINT     NOT NULL DEFAULT 4,
    expires_at   BIGINT       NOT NULL DEFAULT 0,
    created_at   BIGINT       NOT NULL,
    content_type VARCHAR(255) NOT NULL DEFAULT '',
    headers      MEDIUMTEXT   NOT NULL,
    body         LONGBLOB     NOT NULL,
    PRIMARY KEY (address, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS {{.NodeManager}} (
    id          INT          NOT NULL PRIMARY KEY,
    state       VARCHAR(16)  NOT NULL DEFAULT '',
    holder_id   VARCHAR(128) NOT NULL DEFAULT '',
    holder_name VARCHAR(255) NOT NULL DEFAULT '',
    expires_us  BIGINT       NOT NULL DEFAULT 0,
    epoch       BIGINT       NOT NULL DEFAULT 0,
    node_id     VARCHAR(64)  NOT NULL DEFAULT '',
    updated_us  BIGINT       NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
INSERT IGNORE INTO {{.NodeManager}} (id) VALUES (0), (1), (2), (3), (4);

CREATE TABLE IF NOT EXISTS {{.DuplicateIDs}} (
    queue      VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    idem_key   VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    message_id BIGINT       NOT NULL,
    created_at BIGINT       NOT NULL,
    PRIMARY KEY (queue, idem_key),
    KEY {{.DuplicateIDs}}_created_idx (created_at)
) ENGINE=InnoDB;

package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// raw measures what the database itself does with the same payload, through the same
// driver the broker uses (pgx), on a table shaped like the messages table.
type raw struct {
	pool  *pgxpool.Pool
	table string
	body  []byte
}

func newRaw(ctx context.Context, store, prefix string, size int) (*raw, error) {
	if !strings.HasPrefix(store, "postgres://") && !strings.HasPrefix(store, "postgresql://") {
		return nil, fmt.Errorf("the raw baseline needs a postgres:// store, got %q", strings.SplitN(store, ":", 2)[0])
	}
	cfg, err := pgxpool.ParseConfig(store)
	if err != nil {
		return nil, fmt.Errorf("parse store URL: %w", err)
	}
	cfg.MaxConns = 300
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	r := &raw{pool: pool, table: prefix + "raw", body: payload(size)}
	_, err = pool.Exec(ctx, `CREATE TABLE `+r.table+` (
		queue TEXT NOT NULL, id BIGINT NOT NULL, priority SMALLINT NOT NULL DEFAULT 4,
		deliver_at BIGINT NOT NULL DEFAULT 0, expires_at BIGINT NOT NULL DEFAULT 0,
		delivery_count INTEGER NOT NULL DEFAULT 0, created_at BIGINT NOT NULL,
		content_type TEXT NOT NULL DEFAULT '', headers TEXT NOT NULL DEFAULT '',
		body BYTEA NOT NULL, PRIMARY KEY (queue, id))`)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("create raw table: %w", err)
	}
	return r, nil
}

func (r *raw) close(ctx context.Context, keep bool) {
	if !keep {
		_, _ = r.pool.Exec(ctx, `DROP TABLE IF EXISTS `+r.table)
	}
	r.pool.Close()
}

var rawID atomic.Int64

// copyBatches inserts batches of n rows by COPY on conns connections for d.
func (r *raw) copyBatches(ctx context.Context, n, conns int, d time.Duration) (*sample, error) {
	return r.loop(ctx, conns, d, n, func(ctx context.Context, c *pgxpool.Conn) error {
		rows := make([][]any, n)
		now := time.Now().UnixMilli()
		for i := range rows {
			rows[i] = []any{"q", rawID.Add(1), now, "application/octet-stream", r.body}
		}
		_, err := c.CopyFrom(ctx, pgx.Identifier{r.table}, []string{"queue", "id", "created_at", "content_type", "body"}, pgx.CopyFromRows(rows))
		return err
	})
}

// singleInserts commits one row per transaction on conns connections for d.
func (r *raw) singleInserts(ctx context.Context, conns int, d time.Duration) (*sample, error) {
	return r.loop(ctx, conns, d, 1, func(ctx context.Context, c *pgxpool.Conn) error {
		_, err := c.Exec(ctx, `INSERT INTO `+r.table+` (queue, id, created_at, content_type, body) VALUES ($1, $2, $3, $4, $5)`,
			"q", rawID.Add(1), time.Now().UnixMilli(), "application/octet-stream", r.body)
		return err
	})
}

// deleteBatches deletes rows inserted before, n per transaction by key, on one
// connection for d.
func (r *raw) deleteBatches(ctx context.Context, n int, d time.Duration) (*sample, error) {
	var mu sync.Mutex
	var next int64 // the ids are not reset between runs: start below the smallest
	if err := r.pool.QueryRow(ctx, `SELECT COALESCE(MIN(id), 1) - 1 FROM `+r.table+` WHERE queue = 'q'`).Scan(&next); err != nil {
		return nil, fmt.Errorf("smallest raw id: %w", err)
	}
	return r.loop(ctx, 1, d, n, func(ctx context.Context, c *pgxpool.Conn) error {
		mu.Lock()
		ids := make([]int64, n)
		for i := range ids {
			next++
			ids[i] = next
		}
		mu.Unlock()
		tag, err := c.Exec(ctx, `DELETE FROM `+r.table+` WHERE queue = 'q' AND id = ANY($1)`, ids)
		if err == nil && tag.RowsAffected() == 0 {
			return errExhausted
		}
		return err
	})
}

func (r *raw) loop(ctx context.Context, conns int, d time.Duration, perOp int, op func(context.Context, *pgxpool.Conn) error) (*sample, error) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	m := startCPU(0, "postgres")
	s, err := runWorkers(ctx, conns, perOp, func(ctx context.Context, _ int) (int, error) {
		c, err := r.pool.Acquire(ctx)
		if err != nil {
			return 0, err
		}
		defer c.Release()
		if err := op(ctx, c); err != nil {
			return 0, err
		}
		return perOp, nil
	})
	m.stop(s)
	return s, err
}

// reset empties the raw table.
func (r *raw) reset(ctx context.Context) error {
	if _, err := r.pool.Exec(ctx, `TRUNCATE `+r.table); err != nil {
		return fmt.Errorf("truncate raw table: %w", err)
	}
	return nil
}

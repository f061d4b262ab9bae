package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"
)

// Checkpoints. In WAL mode every commit appends pages to the -wal file, and a
// checkpoint copies them back into the database file (and syncs it) so the log can be
// restarted. SQLite's default runs that checkpoint inside whichever commit crosses 1000
// WAL pages, which puts it on the broker's single write connection: the copy, and the
// fsync of the database file, stall every batch behind it (about 12 % of the writer's
// time under batched publish+ack). The driver instead checkpoints from a connection of
// its own in the background (PASSIVE: it never waits for, nor blocks, the writer or the
// readers), so the writer only appends and syncs the log. The write and lease
// connections keep an automatic checkpoint at a much higher mark as a backstop, so the
// log stays bounded even if the background checkpoints fall behind or fail.
const (
	// checkpointInterval is how often the background checkpoint runs.
	checkpointInterval = 100 * time.Millisecond
	// autoCheckpointPages is the backstop: a commit that finds this many pages in the
	// log checkpoints itself (SQLite's default is 1000).
	autoCheckpointPages = 8192
)

// checkpointer runs PASSIVE checkpoints on db until stop is closed, then closes db
// and closes done.
type checkpointer struct {
	db   *sql.DB
	log  *slog.Logger
	stop chan struct{}
	done chan struct{}
}

// startCheckpointer starts the background checkpoints on db (one connection).
func startCheckpointer(db *sql.DB, log *slog.Logger) *checkpointer {
	c := &checkpointer{db: db, log: log, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

func (c *checkpointer) run() {
	defer close(c.done)
	t := time.NewTicker(checkpointInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		err := c.checkpoint()
		switch {
		case err != nil && !failing:
			c.log.Warn("sqlite: background checkpoint failed; commits checkpoint the log themselves meanwhile", "err", err)
		case err == nil && failing:
			c.log.Info("sqlite: background checkpoints work again")
		}
		failing = err != nil
	}
}

// checkpoint runs one PASSIVE checkpoint, bounded by the interval's order of magnitude
// (it copies at most the pages written since the last one).
func (c *checkpointer) checkpoint() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var busy, logPages, copied int
	if err := c.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logPages, &copied); err != nil {
		return fmt.Errorf("wal_checkpoint: %w", err)
	}
	return nil
}

// close stops the checkpoints and closes their connection.
func (c *checkpointer) close() error {
	close(c.stop)
	<-c.done
	return c.db.Close()
}

package migrations

import (
	"database/sql"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/golang-migrate/migrate/v4/database"
)

// addColumnRE matches the SQLite statements sqliteGuard makes idempotent.
var addColumnRE = regexp.MustCompile(`(?is)^ALTER\s+TABLE\s+([A-Za-z_][A-Za-z0-9_]*)\s+ADD\s+COLUMN\s+([A-Za-z_][A-Za-z0-9_]*)\s`)

// statementEndRE ends a statement of a migration file: ";" at the end of a line.
var statementEndRE = regexp.MustCompile(`;[ \t]*(?:\r?\n|$)`)

// sqliteGuard runs SQLite migrations one statement at a time in one transaction, and
// skips an "ALTER TABLE t ADD COLUMN c ..." when t already has column c. SQLite has no
// ADD COLUMN IF NOT EXISTS, and its migration lock is per process, so without this a
// second process running the same migration (or a dirty version run again) would fail
// on the duplicate column. Statements must end with ";" at the end of a line.
type sqliteGuard struct {
	database.Driver
	db *sql.DB
}

// Run implements database.Driver.
func (g *sqliteGuard) Run(migration io.Reader) error {
	raw, err := io.ReadAll(migration)
	if err != nil {
		return err
	}
	tx, err := g.db.Begin() // BEGIN IMMEDIATE on the broker's write DSN
	if err != nil {
		return &database.Error{OrigErr: err, Err: "transaction start failed"}
	}
	for _, stmt := range splitStatements(string(raw)) {
		if m := addColumnRE.FindStringSubmatch(stmt); m != nil {
			var n int
			if err := tx.QueryRow("SELECT COUNT(*) FROM pragma_table_info(?) WHERE name = ?", m[1], m[2]).Scan(&n); err != nil {
				_ = tx.Rollback()
				return &database.Error{OrigErr: fmt.Errorf("columns of %s: %w", m[1], err), Query: []byte(stmt)}
			}
			if n > 0 {
				continue
			}
		}
		if _, err := tx.Exec(stmt); err != nil {
			_ = tx.Rollback()
			return &database.Error{OrigErr: err, Query: []byte(stmt)}
		}
	}
	if err := tx.Commit(); err != nil {
		return &database.Error{OrigErr: err, Err: "transaction commit failed"}
	}
	return nil
}

// splitStatements splits a migration file into its statements, dropping comment-only
// lines and empty statements.
func splitStatements(file string) []string {
	var out []string
	for _, part := range statementEndRE.Split(file, -1) {
		var lines []string
		for _, l := range strings.Split(part, "\n") {
			if t := strings.TrimSpace(l); t != "" && !strings.HasPrefix(t, "--") {
				lines = append(lines, l)
			}
		}
		if len(lines) > 0 {
			out = append(out, strings.TrimSpace(strings.Join(lines, "\n")))
		}
	}
	return out
}

// Package migrations owns the tablemq schema: one folder of golang-migrate migrations per
// dialect (postgres, mysql, sqlite), embedded in the binary, and the runner that applies
// them.
//
// Table names are configurable (Tables), so every SQL file is a Go text/template whose
// fields ({{.Bindings}}, {{.Messages}}, ...) are replaced by the validated names before
// golang-migrate sees it. The version table is named by Tables.Migrations, so two broker
// groups with different names can share one database.
//
// Every statement is idempotent (CREATE ... IF NOT EXISTS, INSERT ... ON CONFLICT DO
// NOTHING / IGNORE). That is what makes concurrent start-up safe: PostgreSQL and MySQL
// additionally serialise migrations with an advisory lock (pg_advisory_lock,
// GET_LOCK), while SQLite's migrate lock is per process, so two processes may run the
// same migration at once and both succeed. For the same reason a version left dirty by a
// crash is repaired by forcing the previous version and running the migration again.
//
// A database migrated by a newer tablemq (its version is above Latest) is refused with
// ErrSchemaTooNew; the binary must be upgraded.
package migrations

import (
	"bytes"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"testing/fstest"
	"text/template"
	"time"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	migratemysql "github.com/golang-migrate/migrate/v4/database/mysql"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	migratesqlite "github.com/golang-migrate/migrate/v4/database/sqlite"
	"github.com/golang-migrate/migrate/v4/source/iofs"
)

// Dialect names, as passed to Up.
const (
	DialectPostgres = "postgres"
	DialectMySQL    = "mysql"
	DialectSQLite   = "sqlite"
)

//go:embed postgres mysql sqlite
var sqlFiles embed.FS

// ErrSchemaTooNew means the database was migrated by a newer tablemq than this one.
// The error returned by Up is a *SchemaTooNewError, which matches it with errors.Is.
var ErrSchemaTooNew = errors.New("database schema is newer than this tablemq; upgrade tablemq")

// SchemaTooNewError reports a database whose schema version is above Latest.
type SchemaTooNewError struct {
	Version uint // the version recorded in the database
	Latest  uint // the highest version this binary knows
}

// Error reads "database schema version N is newer than this tablemq (M); upgrade
// tablemq".
func (e *SchemaTooNewError) Error() string {
	return fmt.Sprintf("database schema version %d is newer than this tablemq (%d); upgrade tablemq", e.Version, e.Latest)
}

// Is makes errors.Is(err, ErrSchemaTooNew) hold.
func (e *SchemaTooNewError) Is(target error) bool { return target == ErrSchemaTooNew }

// Latest returns the highest migration version embedded in this binary (the same for
// every dialect).
func Latest() uint {
	var latest uint
	for _, d := range []string{DialectPostgres, DialectMySQL, DialectSQLite} {
		entries, err := fs.ReadDir(sqlFiles, d)
		if err != nil {
			panic(fmt.Sprintf("migrations: embedded folder %s: %v", d, err))
		}
		for _, e := range entries {
			if v, ok := fileVersion(e.Name()); ok && v > latest {
				latest = v
			}
		}
	}
	return latest
}

// fileVersion parses the leading number of a migration file name ("0001_init.up.sql").
func fileVersion(name string) (uint, bool) {
	i := strings.IndexByte(name, '_')
	if i <= 0 {
		return 0, false
	}
	v, err := strconv.ParseUint(name[:i], 10, 64)
	if err != nil {
		return 0, false
	}
	return uint(v), true
}

// Render returns the migration files of dialect with the table names of t filled in,
// keyed by file name. It is exported for tests and for `tablemq migrate` dry runs.
func Render(dialect string, t Tables) (map[string]string, error) {
	t = t.WithDefaults()
	if err := t.Validate(); err != nil {
		return nil, err
	}
	entries, err := fs.ReadDir(sqlFiles, dialect)
	if err != nil {
		return nil, fmt.Errorf("migrations: unknown dialect %q", dialect)
	}
	out := make(map[string]string, len(entries))
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		raw, err := sqlFiles.ReadFile(path.Join(dialect, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("migrations: read %s/%s: %w", dialect, e.Name(), err)
		}
		tmpl, err := template.New(e.Name()).Option("missingkey=error").Parse(string(raw))
		if err != nil {
			return nil, fmt.Errorf("migrations: parse %s/%s: %w", dialect, e.Name(), err)
		}
		var buf bytes.Buffer
		if err := tmpl.Execute(&buf, t); err != nil {
			return nil, fmt.Errorf("migrations: render %s/%s: %w", dialect, e.Name(), err)
		}
		out[e.Name()] = buf.String()
	}
	return out, nil
}

// Options tunes Up. The zero value is fine.
type Options struct {
	// Logger receives what the runner repairs (a dirty version); nil means
	// slog.Default().
	Logger *slog.Logger
	// Version, when > 0, stops at that version instead of Latest (tests of upgrades
	// from an older schema). It never migrates down.
	Version uint
}

// Up applies every migration of dialect not yet applied to db, with the table names of
// t. It is safe to call from several processes at once (see the package documentation)
// and returns an error matching ErrSchemaTooNew when the database is newer than this
// binary.
//
// Up takes ownership of db and closes it before returning (golang-migrate closes the
// connection it migrated through): pass a *sql.DB opened for the migration alone. For
// MySQL that handle must have multiStatements=true.
func Up(ctx context.Context, db *sql.DB, dialect string, t Tables) error {
	return UpWithOptions(ctx, db, dialect, t, Options{})
}

// UpWithOptions is Up with options.
func UpWithOptions(ctx context.Context, db *sql.DB, dialect string, t Tables, opts Options) (err error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	t = t.WithDefaults()
	files, err := Render(dialect, t)
	if err != nil {
		_ = db.Close()
		return err
	}
	mfs := fstest.MapFS{}
	for name, body := range files {
		mfs[name] = &fstest.MapFile{Data: []byte(body), Mode: 0o444}
	}
	src, err := iofs.New(mfs, ".")
	if err != nil {
		_ = db.Close()
		return fmt.Errorf("migrations: source: %w", err)
	}

	if err := db.PingContext(ctx); err != nil {
		_ = src.Close()
		_ = db.Close()
		return fmt.Errorf("migrations: %w", err)
	}
	var drv database.Driver
	for attempt := 1; ; attempt++ {
		drv, err = openDriver(db, dialect, t)
		if err == nil || attempt == 5 || !retryable(err) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
	if err != nil {
		_ = src.Close()
		_ = db.Close()
		return fmt.Errorf("migrations: %s: prepare version table %s: %w", dialect, t.Migrations, err)
	}
	m, err := migrate.NewWithInstance("iofs", src, dialect, drv)
	if err != nil {
		_ = src.Close()
		_ = drv.Close()
		return fmt.Errorf("migrations: %w", err)
	}
	defer func() {
		srcErr, dbErr := m.Close()
		if err == nil && srcErr != nil {
			err = fmt.Errorf("migrations: close source: %w", srcErr)
		}
		if err == nil && dbErr != nil {
			err = fmt.Errorf("migrations: close database: %w", dbErr)
		}
	}()
	m.Log = migrateLogger{logger}
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 {
			m.LockTimeout = d
		}
	}
	// golang-migrate takes no context: stop it gracefully (between migrations) when ctx ends.
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			select {
			case m.GracefulStop <- true:
			default:
			}
		case <-stopped:
		}
	}()

	latest := Latest()
	const attempts = 5
	for attempt := 1; ; attempt++ {
		err = up(ctx, m, latest, opts.Version, logger, dialect, t)
		if err == nil || attempt == attempts || !retryable(err) || ctx.Err() != nil {
			break
		}
		logger.Warn("schema migration raced with another process; retrying", "dialect", dialect, "attempt", attempt, "error", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(attempt) * 100 * time.Millisecond):
		}
	}
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ErrSchemaTooNew) {
			return fmt.Errorf("migrations: %s: %w (%v)", dialect, ctxErr, err)
		}
		return err
	}
	return nil
}

// openDriver wraps db in the golang-migrate driver of dialect, which creates the
// version table if needed.
func openDriver(db *sql.DB, dialect string, t Tables) (database.Driver, error) {
	switch dialect {
	case DialectPostgres:
		return migratepgx.WithInstance(db, &migratepgx.Config{MigrationsTable: t.Migrations, StatementTimeout: 5 * time.Minute})
	case DialectMySQL:
		return migratemysql.WithInstance(db, &migratemysql.Config{MigrationsTable: t.Migrations, StatementTimeout: 5 * time.Minute})
	case DialectSQLite:
		drv, err := migratesqlite.WithInstance(db, &migratesqlite.Config{MigrationsTable: t.Migrations})
		if err != nil {
			return nil, err
		}
		return &sqliteGuard{Driver: drv, db: db}, nil
	default:
		return nil, fmt.Errorf("unknown dialect %q", dialect)
	}
}

// up runs one attempt: check the version, repair a dirty one, apply what is missing.
func up(ctx context.Context, m *migrate.Migrate, latest, target uint, logger *slog.Logger, dialect string, t Tables) error {
	v, dirty, err := m.Version()
	switch {
	case errors.Is(err, migrate.ErrNilVersion):
	case err != nil:
		return fmt.Errorf("migrations: %s: read version from %s: %w", dialect, t.Migrations, err)
	case v > latest:
		return &SchemaTooNewError{Version: v, Latest: latest}
	case dirty:
		// Every migration is idempotent, so running it again is safe.
		prev := int(v) - 1
		if prev < 1 {
			prev = database.NilVersion
		}
		logger.Warn("schema version is dirty (an earlier migration was interrupted or is running elsewhere); forcing the previous version and running it again",
			"dialect", dialect, "table", t.Migrations, "version", v, "forced", prev)
		if err := m.Force(prev); err != nil {
			return fmt.Errorf("migrations: %s: force version %d: %w", dialect, prev, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if target > 0 && target < latest {
		if err == nil && !dirty && v >= target {
			return nil
		}
		err = m.Migrate(target)
	} else {
		err = m.Up()
	}
	if err == nil || errors.Is(err, migrate.ErrNoChange) {
		return nil
	}
	var dirtyErr migrate.ErrDirty
	if errors.As(err, &dirtyErr) {
		return &retryError{fmt.Errorf("migrations: %s: %w", dialect, err)}
	}
	if errors.Is(err, fs.ErrNotExist) {
		// The version row moved past what we embed between our check and Up.
		if v2, _, verr := m.Version(); verr == nil && v2 > latest {
			return &SchemaTooNewError{Version: v2, Latest: latest}
		}
	}
	return fmt.Errorf("migrations: %s: apply: %w", dialect, err)
}

// retryError marks an error of a migration that raced with another process.
type retryError struct{ err error }

func (e *retryError) Error() string { return e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

func retryable(err error) bool {
	var r *retryError
	if errors.As(err, &r) || errors.Is(err, database.ErrLocked) || errors.Is(err, migrate.ErrLockTimeout) {
		return true
	}
	// SQLite: another process holds the write lock past busy_timeout, or created the
	// version table's index at the same instant.
	s := err.Error()
	return strings.Contains(s, "SQLITE_BUSY") || strings.Contains(s, "database is locked") ||
		strings.Contains(s, "already exists") || strings.Contains(s, "UNIQUE constraint failed") ||
		strings.Contains(s, "Duplicate entry") || strings.Contains(s, "duplicate key")
}

// migrateLogger adapts slog to golang-migrate's logger.
type migrateLogger struct{ l *slog.Logger }

func (l migrateLogger) Printf(format string, v ...any) {
	l.l.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)), "component", "migrate")
}

func (l migrateLogger) Verbose() bool { return false }

// Versions returns the versions embedded for dialect, ascending. Tests use it.
func Versions(dialect string) ([]uint, error) {
	entries, err := fs.ReadDir(sqlFiles, dialect)
	if err != nil {
		return nil, fmt.Errorf("migrations: unknown dialect %q", dialect)
	}
	seen := map[uint]bool{}
	var out []uint
	for _, e := range entries {
		if v, ok := fileVersion(e.Name()); ok && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

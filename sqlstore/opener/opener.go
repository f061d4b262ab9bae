// Package opener turns a store URL (the --store flag) into an open sqlstore.Driver. It
// is the only place that knows every dialect; only cmd and tests import it.
//
// URL forms (CONTRACT.md):
//
//	sqlite:PATH                              a file; parent directories are created
//	postgres://user:pass@host:port/db?...    also postgresql://; parameters go to pgx
//	mysql://user:pass@tcp(host:port)/db?...  go-sql-driver/mysql DSN after the scheme
//
// Errors read on one line ("open store postgres://u@h/db: ...") and never contain the
// password.
package opener

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	gomysql "github.com/go-sql-driver/mysql"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/mysql"
	"github.com/tablemq/tablemq/sqlstore/postgres"
	"github.com/tablemq/tablemq/sqlstore/sqlite"
)

// Options configures Open. Zero values mean the defaults.
type Options struct {
	// Tables names the tables; zero fields mean the defaults.
	Tables migrations.Tables
	// PasswordFile, if set, names a file whose content (trimmed of surrounding white
	// space) is the database password, replacing any in the URL.
	PasswordFile string
	// Logger receives the driver's logs; nil means slog.Default().
	Logger *slog.Logger
	// MaxConns bounds the driver's connection pool (ignored by SQLite, which writes
	// through one connection); 0 means the driver's default.
	MaxConns int
}

// Target is a parsed store URL.
type Target struct {
	Dialect string // migrations.DialectPostgres, DialectMySQL or DialectSQLite
	// DSN is what the dialect's driver is opened with: the file path for SQLite, the
	// URL for PostgreSQL, the go-sql-driver DSN for MySQL. It may hold a password.
	DSN string
	// Redacted is the URL without its password, for messages.
	Redacted string
	// password, to scrub from error messages.
	password string
}

// Parse parses a store URL. A non-empty password replaces the URL's own.
func Parse(storeURL, password string) (Target, error) {
	switch {
	case strings.HasPrefix(storeURL, "sqlite:"):
		p := strings.TrimPrefix(storeURL, "sqlite:")
		p = strings.TrimPrefix(p, "//") // sqlite:///abs/path or sqlite://rel/path
		if p == "" {
			return Target{}, errors.New("store URL sqlite: needs a file path (sqlite:PATH)")
		}
		return Target{Dialect: migrations.DialectSQLite, DSN: p, Redacted: "sqlite:" + p}, nil

	case strings.HasPrefix(storeURL, "postgres://"), strings.HasPrefix(storeURL, "postgresql://"):
		u, err := url.Parse(storeURL)
		if err != nil {
			return Target{}, fmt.Errorf("store URL %s: %w", redactPostgresText(storeURL), scrub(err, storeURL))
		}
		q := u.Query()
		pw, _ := u.User.Password()
		if qpw := q.Get("password"); qpw != "" && pw == "" {
			pw = qpw
		}
		if password != "" {
			pw = password
			q.Del("password")
			u.RawQuery = q.Encode()
			user := ""
			if u.User != nil {
				user = u.User.Username()
			}
			u.User = url.UserPassword(user, password)
		}
		red := *u
		if red.User != nil {
			red.User = url.User(red.User.Username())
		}
		rq := red.Query()
		if rq.Has("password") {
			rq.Del("password")
			red.RawQuery = rq.Encode()
		}
		if u.Host == "" {
			return Target{}, fmt.Errorf("store URL %s: no host", red.String())
		}
		return Target{Dialect: migrations.DialectPostgres, DSN: u.String(), Redacted: red.String(), password: pw}, nil

	case strings.HasPrefix(storeURL, "mysql://"):
		cfg, err := gomysql.ParseDSN(strings.TrimPrefix(storeURL, "mysql://"))
		if err != nil {
			return Target{}, fmt.Errorf("store URL mysql://...: %s (want mysql://user:pass@tcp(host:port)/db)", scrubText(err, storeURL))
		}
		if password != "" {
			cfg.Passwd = password
		}
		pw := cfg.Passwd
		red := cfg.Clone()
		red.Passwd = ""
		if cfg.DBName == "" {
			return Target{}, fmt.Errorf("store URL mysql://%s: no database name", red.FormatDSN())
		}
		return Target{Dialect: migrations.DialectMySQL, DSN: cfg.FormatDSN(), Redacted: "mysql://" + red.FormatDSN(), password: pw}, nil
	}
	scheme := storeURL
	if i := strings.IndexAny(scheme, ":/"); i >= 0 {
		scheme = scheme[:i]
	}
	return Target{}, fmt.Errorf("store URL: unknown scheme %q (want sqlite:PATH, postgres://..., postgresql://... or mysql://user:pass@tcp(host:port)/db)", scheme)
}

// Open parses storeURL, opens the dialect's driver and checks the database answers,
// bounded by ctx. It does not migrate: call Migrate on the result.
func Open(ctx context.Context, storeURL string, opts Options) (sqlstore.Driver, error) {
	password := ""
	if opts.PasswordFile != "" {
		b, err := os.ReadFile(opts.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("store password file: %w", err)
		}
		password = strings.TrimSpace(string(b))
		if password == "" {
			return nil, fmt.Errorf("store password file %s is empty", opts.PasswordFile)
		}
	}
	t, err := Parse(storeURL, password)
	if err != nil {
		return nil, err
	}
	drv, err := open(ctx, t, opts)
	if err != nil {
		return nil, &openError{target: t.Redacted, err: err, secret: t.password}
	}
	return drv, nil
}

func open(ctx context.Context, t Target, opts Options) (sqlstore.Driver, error) {
	switch t.Dialect {
	case migrations.DialectSQLite:
		if dir := filepath.Dir(t.DSN); dir != "" {
			if err := os.MkdirAll(dir, 0o750); err != nil {
				return nil, fmt.Errorf("create directory: %w", err)
			}
		}
		return sqlite.Open(ctx, sqlite.Config{DSN: t.DSN, Tables: opts.Tables, Logger: opts.Logger})
	case migrations.DialectPostgres:
		return postgres.Open(ctx, postgres.Config{DSN: t.DSN, Tables: opts.Tables, Logger: opts.Logger, MaxConns: opts.MaxConns})
	case migrations.DialectMySQL:
		return mysql.Open(ctx, mysql.Config{DSN: t.DSN, Tables: opts.Tables, Logger: opts.Logger, MaxConns: opts.MaxConns})
	}
	return nil, fmt.Errorf("unknown dialect %q", t.Dialect)
}

// openError is a failed Open: "open store URL: cause", with the password scrubbed from
// the text. Unwrap keeps the cause for errors.Is.
type openError struct {
	target string
	err    error
	secret string
}

func (e *openError) Error() string {
	msg := fmt.Sprintf("open store %s: %v", e.target, e.err)
	if e.secret != "" {
		msg = strings.ReplaceAll(msg, e.secret, "xxxxx")
	}
	return strings.Join(strings.Fields(msg), " ")
}

func (e *openError) Unwrap() error { return e.err }

// scrub returns err with the URL's password removed from its text.
func scrub(err error, rawURL string) error {
	return errors.New(scrubText(err, rawURL))
}

func scrubText(err error, rawURL string) string {
	msg := err.Error()
	if i := strings.Index(rawURL, "://"); i >= 0 {
		rest := rawURL[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			userinfo := rest[:at]
			if c := strings.Index(userinfo, ":"); c >= 0 && c+1 < len(userinfo) {
				msg = strings.ReplaceAll(msg, userinfo[c+1:], "xxxxx")
			}
		}
	}
	return msg
}

// redactPostgresText removes the password of a URL that net/url could not parse.
func redactPostgresText(raw string) string {
	i := strings.Index(raw, "://")
	if i < 0 {
		return raw
	}
	rest := raw[i+3:]
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return raw
	}
	userinfo := rest[:at]
	if c := strings.Index(userinfo, ":"); c >= 0 {
		userinfo = userinfo[:c]
	}
	return raw[:i+3] + userinfo + rest[at:]
}

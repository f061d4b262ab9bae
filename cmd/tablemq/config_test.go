package main

import (
	"bytes"
	"context"
	"io/fs"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// parsed is what a test run of the command line produced.
type parsed struct {
	cmd    string // "serve" or "migrate", "" when neither ran
	opts   *options
	code   int
	stdout string
	stderr string
}

// parse runs args with the given environment and files, with serve and migrate
// replaced by recorders.
func parse(t *testing.T, args []string, env map[string]string, files map[string]string) parsed {
	t.Helper()
	var p parsed
	var stdout, stderr bytes.Buffer
	a := &app{
		stdout: &stdout,
		stderr: &stderr,
		src: sources{
			LookupEnv: func(k string) (string, bool) { v, ok := env[k]; return v, ok },
			Environ: func() []string {
				var out []string
				for k, v := range env {
					out = append(out, k+"="+v)
				}
				return out
			},
			ReadFile: func(name string) ([]byte, error) {
				if v, ok := files[name]; ok {
					return []byte(v), nil
				}
				return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
			},
		},
		serve: func(_ context.Context, _ *app, o *options) error {
			p.cmd, p.opts = "serve", o
			return nil
		},
		migrate: func(_ context.Context, _ *app, o *options) error {
			p.cmd, p.opts = "migrate", o
			return nil
		},
	}
	p.code = a.execute(context.Background(), args)
	p.stdout, p.stderr = stdout.String(), stderr.String()
	return p
}

// requireFails checks that args fail with exactly one stderr line containing want.
func requireFails(t *testing.T, p parsed, want string) {
	t.Helper()
	require.Equal(t, 1, p.code, "stderr: %s", p.stderr)
	require.Empty(t, p.cmd, "the command must not run")
	require.True(t, strings.HasPrefix(p.stderr, "tablemq: "), "stderr: %q", p.stderr)
	require.Equal(t, 1, strings.Count(p.stderr, "\n"), "exactly one line: %q", p.stderr)
	require.Contains(t, p.stderr, want)
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	p := parse(t, []string{"serve"}, nil, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.Equal(t, "serve", p.cmd)
	o := p.opts
	require.Equal(t, "sqlite:./data/tablemq.db", o.Store)
	require.Equal(t, "sqlite", o.store.Dialect)
	require.Equal(t, "./data/tablemq.db", o.store.DSN)
	require.Equal(t, "127.0.0.1:8780", o.Listen)
	require.Equal(t, defaultNodeName(), o.NodeName)
	require.Equal(t, "none", o.HAPolicy)
	require.Equal(t, LockRenewPeriodDefault, o.LockRenewPeriod)
	require.Equal(t, LockExpirationDefault, o.LockExpiration)
	require.Equal(t, NetworkTimeoutDefault, o.NetworkTimeout)
	require.Equal(t, PollIntervalDefault, o.BackupPollInterval)
	require.Equal(t, time.Duration(0), o.JournalSyncPeriod)
	require.Equal(t, 0, o.WriterLanes)
	require.Equal(t, time.Hour, o.DuplicateWindow)
	require.Equal(t, byteSize(1<<30), o.MaxMessageSize)
	require.Equal(t, byteSize(100<<10), o.LargeMessageThreshold)
	require.Equal(t, byteSize(256<<10), o.LargeChunkSize)
	require.Equal(t, 30*time.Second, o.ShutdownTimeout)
	require.Equal(t, "info", o.LogLevel)
	require.Equal(t, "text", o.LogFormat)
	require.Equal(t, "tmq_bindings", o.Tables.Bindings)
	require.Equal(t, "tmq_schema_migrations", o.Tables.Migrations)
	require.Equal(t, "tmq_counters", o.Tables.Counters)
	require.False(t, o.FailoverOnShutdown || o.AllowFailback || o.RestartBackup)
	require.Empty(t, o.warnings)
}

// TestPrecedence checks flag > environment > config file > default for options of
// every kind (string, duration, bool, byte size, table name).
func TestPrecedence(t *testing.T) {
	t.Parallel()
	files := map[string]string{"/etc/tmq.yaml": `
listen: 127.0.0.1:1001
node-name: from-file
lock-expiration: 40s
duplicate-window: 2h
failover-on-shutdown: true
max-message-size: 2MiB
large-message-threshold: 64KiB
large-chunk-size: 128KiB
max-size-bytes: 1GiB
address-full-policy: BLOCK
message-table-name: file_messages
network-timeout: 7s
`}
	env := map[string]string{
		"TABLEMQ_CONFIG":           "/etc/tmq.yaml",
		"TABLEMQ_LISTEN":           "127.0.0.1:1002",
		"TABLEMQ_NODE_NAME":        "from-env",
		"TABLEMQ_LOCK_EXPIRATION":  "50s",
		"TABLEMQ_MAX_MESSAGE_SIZE": "4096",
		"TABLEMQ_LARGE_CHUNK_SIZE": "8KiB",
		"TABLEMQ_GLOBAL_MAX_SIZE":  "2GiB",
		"TABLEMQ_TEST_REQUIRE":     "postgres", // unrelated TABLEMQ_ variables are ignored
	}
	p := parse(t, []string{"serve", "--listen", "127.0.0.1:1003", "--lock-expiration=60s"}, env, files)
	require.Equal(t, 0, p.code, p.stderr)
	o := p.opts
	require.Equal(t, "127.0.0.1:1003", o.Listen, "flag beats env and file")
	require.Equal(t, 60*time.Second, o.LockExpiration, "flag beats env and file")
	require.Equal(t, "from-env", o.NodeName, "env beats file")
	require.Equal(t, byteSize(4096), o.MaxMessageSize, "env beats file")
	require.Equal(t, byteSize(8<<10), o.LargeChunkSize, "env beats file")
	require.Equal(t, byteSize(64<<10), o.LargeMessageThreshold, "file beats default")
	require.Equal(t, byteSize(1<<30), o.MaxSizeBytes, "file beats default")
	require.Equal(t, byteSize(2<<30), o.GlobalMaxSize, "env beats default")
	require.Equal(t, "BLOCK", o.AddressFullPolicy, "file beats default")
	require.Equal(t, 2*time.Hour, o.DuplicateWindow, "file beats default")
	require.True(t, o.FailoverOnShutdown, "file beats default")
	require.Equal(t, "file_messages", o.Tables.Messages, "file beats default")
	require.Equal(t, 7*time.Second, o.NetworkTimeout, "file beats default")
	require.Equal(t, "tmq_bindings", o.Tables.Bindings, "default")
	require.Equal(t, "/etc/tmq.yaml", o.Config)
}

func TestUnknownEnvWarns(t *testing.T) {
	t.Parallel()
	p := parse(t, []string{"serve"}, map[string]string{"TABLEMQ_LISTNE": "x", "TABLEMQ_TEST_REQUIRE": "mysql",
		"TABLEMQ_BENCH_STORE": "y", "TABLEMQ_LISTEN": "127.0.0.1:1", "OTHER": "z"}, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.Equal(t, []string{"environment variable TABLEMQ_LISTNE names no option: ignored"}, p.opts.warnings)
}

func TestConfigFlagBeatsConfigEnv(t *testing.T) {
	t.Parallel()
	files := map[string]string{
		"a.yaml": "node-name: a\n",
		"b.yaml": "node-name: b\n",
	}
	p := parse(t, []string{"serve", "--config", "b.yaml"}, map[string]string{"TABLEMQ_CONFIG": "a.yaml"}, files)
	require.Equal(t, 0, p.code, p.stderr)
	require.Equal(t, "b", p.opts.NodeName)
}

// TestMigrateSharesConfigFile checks that migrate accepts a config file written for
// serve: keys of other commands are not errors there.
func TestMigrateSharesConfigFile(t *testing.T) {
	t.Parallel()
	files := map[string]string{"c.yaml": "store: postgres://u@db:5432/q\nlisten: 0.0.0.0:80\nmigrations-table-name: m\n"}
	p := parse(t, []string{"migrate", "up", "--config", "c.yaml"}, nil, files)
	require.Equal(t, 0, p.code, p.stderr)
	require.Equal(t, "migrate", p.cmd)
	require.Equal(t, "postgres://u@db:5432/q", p.opts.store.DSN)
	require.Equal(t, "m", p.opts.Tables.Migrations)

	p = parse(t, []string{"migrate", "up", "--listen", "x:1"}, nil, nil)
	requireFails(t, p, "unknown flag: --listen")
}

func TestBoolFlagForms(t *testing.T) {
	t.Parallel()
	p := parse(t, []string{"serve", "--ha-policy", "shared-store-primary", "--failover-on-shutdown", "true",
		"--allow-failback", "--restart-backup=true"}, nil, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.True(t, p.opts.FailoverOnShutdown)
	require.True(t, p.opts.AllowFailback)
	require.True(t, p.opts.RestartBackup)

	p = parse(t, []string{"serve", "--failover-on-shutdown", "false"}, map[string]string{"TABLEMQ_FAILOVER_ON_SHUTDOWN": "true"}, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.False(t, p.opts.FailoverOnShutdown)
}

func TestHAPolicyWarns(t *testing.T) {
	t.Parallel()
	p := parse(t, []string{"serve", "--ha-policy", "shared-store-backup", "--allow-failback", "--restart-backup"}, nil, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.Empty(t, p.opts.warnings)

	p = parse(t, []string{"serve", "--allow-failback"}, nil, nil)
	require.Equal(t, 0, p.code, p.stderr)
	require.Len(t, p.opts.warnings, 1)
	require.Contains(t, p.opts.warnings[0], "only with ha-policy shared-store-backup")
}

func TestStorePasswordFile(t *testing.T) {
	t.Parallel()
	files := map[string]string{"pw": "s3cr@t/:x\n", "empty": "\n"}
	p := parse(t, []string{"serve", "--store", "postgres://app@db:5432/q?sslmode=disable", "--store-password-file", "pw"}, nil, files)
	require.Equal(t, 0, p.code, p.stderr)
	require.Equal(t, "postgres://app:s3cr%40t%2F%3Ax@db:5432/q?sslmode=disable", p.opts.store.DSN)
	require.Equal(t, "s3cr@t/:x", p.opts.password)
	require.NotContains(t, p.opts.store.Redacted, "s3cr")

	p = parse(t, []string{"serve", "--store", "mysql://app:old@tcp(db:3306)/q", "--store-password-file", "pw"}, nil, files)
	require.Equal(t, 0, p.code, p.stderr)
	require.Equal(t, "app:s3cr@t/:x@tcp(db:3306)/q", p.opts.store.DSN)
	require.NotContains(t, p.opts.store.Redacted, "s3cr")

	p = parse(t, []string{"serve", "--store-password-file", "pw"}, nil, files)
	requireFails(t, p, "sqlite store takes no password")
	p = parse(t, []string{"serve", "--store", "postgres://u@db/q", "--store-password-file", "missing"}, nil, files)
	requireFails(t, p, "store-password-file: open missing")
	p = parse(t, []string{"serve", "--store", "postgres://u@db/q", "--store-password-file", "empty"}, nil, files)
	requireFails(t, p, "is empty")
}

// TestErrors checks that every invalid option fails before anything runs, with one
// line naming the option.
func TestErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		files map[string]string
		want  string
	}{
		{"unknown flag", []string{"serve", "--bogus"}, nil, nil, "unknown flag: --bogus"},
		{"unknown command", []string{"srve"}, nil, nil, `unknown command "srve"`},
		{"positional arg", []string{"serve", "extra"}, nil, nil, `unknown command "extra"`},
		{"migrate without up", []string{"migrate"}, nil, nil, "want a subcommand: up"},
		{"bad duration flag", []string{"serve", "--lock-expiration", "soon"}, nil, nil, `invalid argument "soon"`},
		{"bad duration env", []string{"serve"}, map[string]string{"TABLEMQ_NETWORK_TIMEOUT": "x"}, nil, `TABLEMQ_NETWORK_TIMEOUT: invalid value "x"`},
		{"bad bool env", []string{"serve"}, map[string]string{"TABLEMQ_ALLOW_FAILBACK": "maybe"}, nil, "TABLEMQ_ALLOW_FAILBACK"},
		{"bad size", []string{"serve", "--max-message-size", "1 parsec"}, nil, nil, "max-message-size"},
		{"zero size", []string{"serve", "--max-message-size", "0"}, nil, nil, "max-message-size: must be positive"},
		{"huge size", []string{"serve", "--max-message-size", "65GiB"}, nil, nil, "max-message-size: at most"},
		{"huge threshold", []string{"serve", "--large-message-threshold", "17MiB"}, nil, nil, "large-message-threshold: must be"},
		{"tiny chunk", []string{"serve"}, map[string]string{"TABLEMQ_LARGE_CHUNK_SIZE": "1KiB"}, nil, "large-chunk-size: must be"},
		{"full policy", []string{"serve", "--address-full-policy", "SPILL"}, nil, nil, "address-full-policy: want PAGE"},
		{"window size", []string{"serve", "--window-size", "0"}, nil, nil, "window-size: want 1..100000"},
		{"window bytes", []string{"serve", "--window-bytes", "1KiB"}, nil, nil, "window-bytes: at least 4KiB"},
		{"block timeout", []string{"serve", "--block-timeout", "0s"}, nil, nil, "block-timeout: must be positive"},
		{"renew not below expiration", []string{"serve", "--lock-renew-period", "10s", "--lock-expiration", "10s"}, nil, nil,
			"lock-renew-period: must be shorter than lock-expiration"},
		{"network timeout not below expiration", []string{"serve", "--network-timeout", "20s"}, nil, nil,
			"network-timeout: must be shorter than lock-expiration"},
		{"zero renew", []string{"serve", "--lock-renew-period", "0s"}, nil, nil, "lock-renew-period: must be positive"},
		{"negative sync period", []string{"serve", "--journal-sync-period", "-1ms"}, nil, nil, "journal-sync-period"},
		{"writer lanes", []string{"serve", "--writer-lanes", "65"}, nil, nil, "writer-lanes: want 0..64"},
		{"negative writer lanes", []string{"serve", "--writer-lanes", "-1"}, nil, nil, "writer-lanes: want 0..64"},
		{"short duplicate window", []string{"serve", "--duplicate-window", "10ms"}, nil, nil, "duplicate-window: must be at least 1s"},
		{"zero shutdown timeout", []string{"serve", "--shutdown-timeout", "0s"}, nil, nil, "shutdown-timeout: must be positive"},
		{"ha policy", []string{"serve", "--ha-policy", "primary"}, nil, nil, "ha-policy: want none"},
		{"listen", []string{"serve", "--listen", "8780"}, nil, nil, "listen: want HOST:PORT"},
		{"listen port", []string{"serve", "--listen", "localhost:http2"}, nil, nil, "listen: invalid port"},
		{"node name", []string{"serve", "--node-name", " "}, nil, nil, "node-name: must not be empty"},
		{"store scheme", []string{"serve", "--store", "oracle://x"}, nil, nil, "unknown scheme"},
		{"store mysql without db", []string{"serve", "--store", "mysql://root:hunter2@tcp(h:3306)/"}, nil, nil, "no database name"},
		{"store sqlite path", []string{"migrate", "up", "--store", "sqlite:"}, nil, nil, "needs a file path"},
		{"store empty", []string{"migrate", "up", "--store", " "}, nil, nil, "store: must not be empty"},
		{"store password redacted", []string{"serve", "--store", "postgres://u:hunter2@%zz/db"}, nil, nil, "store URL"},
		{"table name", []string{"migrate", "up", "--message-table-name", "1bad"}, nil, nil, "message-table-name"},
		{"table name twice", []string{"serve", "--message-table-name", "tmq_bindings"}, nil, nil, "already used"},
		{"log level", []string{"serve", "--log-level", "loud"}, nil, nil, "log-level: want debug"},
		{"log format", []string{"serve", "--log-format", "xml"}, nil, nil, "log-format: want text or json"},
		{"config missing", []string{"serve", "--config", "nope.yaml"}, nil, nil, "config file: open nope.yaml"},
		{"config unknown key", []string{"serve", "--config", "c.yaml"}, nil, map[string]string{"c.yaml": "lisen: x\n"}, `unknown key "lisen"`},
		{"config nested", []string{"serve", "--config", "c.yaml"}, nil, map[string]string{"c.yaml": "listen: {a: 1}\n"}, "want a single value"},
		{"config bad yaml", []string{"serve", "--config", "c.yaml"}, nil, map[string]string{"c.yaml": "listen: [\n"}, "config file c.yaml"},
		{"config bad value", []string{"serve", "--config", "c.yaml"}, nil, map[string]string{"c.yaml": "lock-expiration: 10\n"}, "lock-expiration"},
		{"config names config", []string{"serve", "--config", "c.yaml"}, nil, map[string]string{"c.yaml": "config: d.yaml\n"}, "cannot name another"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := parse(t, tc.args, tc.env, tc.files)
			requireFails(t, p, tc.want)
			require.NotContains(t, p.stderr, "hunter2")
		})
	}
}

func TestVersionAndHelp(t *testing.T) {
	t.Parallel()
	p := parse(t, []string{"version"}, nil, nil)
	require.Equal(t, 0, p.code)
	require.True(t, strings.HasPrefix(p.stdout, "tablemq "), p.stdout)

	p = parse(t, nil, nil, nil)
	require.Equal(t, 0, p.code)
	require.Contains(t, p.stdout, "serve")

	p = parse(t, []string{"serve", "--help"}, nil, nil)
	require.Equal(t, 0, p.code)
	require.Empty(t, p.cmd)
	require.Contains(t, p.stdout, "--store-password-file")
}

func TestByteSize(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int64{"0": 0, "1024": 1024, "1KiB": 1024, "1MiB": 1 << 20, "2 MB": 2e6, "3G": 3 << 30, "5B": 5} {
		var b byteSize
		require.NoError(t, b.Set(in), in)
		require.Equal(t, want, int64(b), in)
	}
	for _, in := range []string{"", "-1", "1.5MiB", "MiB", "1TiB", "99999999999GiB"} {
		var b byteSize
		require.Error(t, b.Set(in), in)
	}
}

func TestStorePasswordAndScrub(t *testing.T) {
	t.Parallel()
	require.Equal(t, "pa ss", storePassword("postgres://u:pa%20ss@h/db"))
	require.Equal(t, "p@w", storePassword("mysql://root:p@w@tcp(h:3306)/db"))
	require.Empty(t, storePassword("mysql://root:@tcp(h:3306)/db"))
	require.Empty(t, storePassword("sqlite:./x.db"))
	require.Equal(t, "tiger", storePassword("oracle://scott:tiger@db/x"))
	require.Equal(t, "dial xxxxx failed", scrub("dial p@ss failed", "p@ss"))
	require.Equal(t, "dial xxxxx failed", scrub("dial p%40ss failed", "p@ss"))
}

func TestOneLine(t *testing.T) {
	t.Parallel()
	require.Equal(t, `unknown command "x" Did you mean this? serve`, oneLine("unknown command \"x\"\n\nDid you mean this?\n\tserve\n"))
}

func TestHeldWriter(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	w := newHeldWriter(&out)
	_, _ = w.Write([]byte("a\n"))
	require.Empty(t, out.String())
	w.release(true)
	require.Equal(t, "a\n", out.String())
	_, _ = w.Write([]byte("b\n"))
	require.Equal(t, "a\nb\n", out.String())

	out.Reset()
	w = newHeldWriter(&out)
	_, _ = w.Write([]byte("dropped\n"))
	w.release(false)
	w.release(true)
	require.Empty(t, out.String())
}

func TestJoinBoolValues(t *testing.T) {
	t.Parallel()
	bools := map[string]bool{"b": true}
	require.Equal(t, []string{"serve", "--b=true", "--x", "true", "--b", "--y"},
		joinBoolValues([]string{"serve", "--b", "true", "--x", "true", "--b", "--y"}, bools))
	require.Equal(t, []string{"--", "--b", "false"}, joinBoolValues([]string{"--", "--b", "false"}, bools))
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

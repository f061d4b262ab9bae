package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"

	"github.com/tablemq/tablemq/migrations"
	"github.com/tablemq/tablemq/nodemanager"
	"github.com/tablemq/tablemq/server"
	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/opener"
)

// Defaults of the command-line options, those of library packages included.
const (
	StoreDefault           = "sqlite:./data/tablemq.db"
	ListenDefault          = "127.0.0.1:8780"
	HAPolicyDefault        = string(nodemanager.PolicyDefault)
	LockRenewPeriodDefault = nodemanager.LockRenewPeriodDefault
	LockExpirationDefault  = nodemanager.LockExpirationDefault
	NetworkTimeoutDefault  = nodemanager.NetworkTimeoutDefault
	PollIntervalDefault    = nodemanager.PollIntervalDefault
	ShutdownTimeoutDefault = 30 * time.Second
	LogLevelDefault        = "info"
	LogFormatDefault       = "text"
	NodeNameFallback       = "tablemq"
	// MaxMessageSizeLimit bounds --max-message-size. Bodies above
	// --large-message-threshold are streamed in chunks, never held whole in memory.
	MaxMessageSizeLimit = 64 << 30
)

// envPrefix is put in front of a flag's upper-cased name (with - as _) to name its
// environment variable.
const envPrefix = "TABLEMQ_"

// options holds every option of the binary after flags, environment and config file
// have been merged. Each field is bound to one flag; see registerCommon and
// registerServe.
type options struct {
	// Common to every command that opens the store.
	Config            string
	Store             string
	StorePasswordFile string
	NetworkTimeout    time.Duration
	Tables            migrations.Tables
	LogLevel          string
	LogFormat         string

	// serve only.
	Listen             string
	NodeName           string
	HAPolicy           string
	LockRenewPeriod    time.Duration
	LockExpiration     time.Duration
	BackupPollInterval time.Duration
	FailoverOnShutdown bool
	AllowFailback      bool
	RestartBackup      bool
	JournalSyncPeriod  time.Duration
	WriterLanes        int
	DuplicateWindow    time.Duration
	MaxMessageSize     byteSize
	// Large messages: the body size above which a publish is streamed into chunk
	// rows, and the size of one chunk.
	LargeMessageThreshold byteSize
	LargeChunkSize        byteSize
	// Sizes and paging: the default limit of an address (or queue), the limit of all
	// of them together, what a publish does past it, and the in-memory window.
	MaxSizeBytes      byteSize
	GlobalMaxSize     byteSize
	AddressFullPolicy string
	BlockTimeout      time.Duration
	WindowSize        int
	WindowBytes       byteSize
	ShutdownTimeout   time.Duration
	PprofListen       string

	// store is the parsed --store (with the password of --store-password-file); set
	// by validate.
	store opener.Target
	// password is the store password, if any, so that it can be scrubbed from error
	// messages; set by validate.
	password string
	// serve tells validate to check the serve-only options too.
	serve bool
	// warnings are set by validate: accepted options that do not act as asked. They are
	// logged once the logger exists.
	warnings []string
}

// registerCommon binds the options shared by serve and migrate to fs.
func registerCommon(fs *pflag.FlagSet, o *options) {
	fs.StringVar(&o.Config, "config", "", "YAML config file; its keys are the flag names")
	fs.StringVar(&o.Store, "store", StoreDefault,
		"store URL: sqlite:PATH, postgres://user@host:port/db (or postgresql://), mysql://user:pass@tcp(host:port)/db")
	fs.StringVar(&o.StorePasswordFile, "store-password-file", "",
		"file holding the store password (surrounding white space ignored); it replaces any password in --store")
	fs.DurationVar(&o.NetworkTimeout, "network-timeout", NetworkTimeoutDefault,
		"bound on connecting to the store and on every lock statement")
	t := migrations.Tables{}.WithDefaults()
	o.Tables = t
	fs.StringVar(&o.Tables.Bindings, "bindings-table-name", t.Bindings, "table of addresses, queues and bindings")
	fs.StringVar(&o.Tables.Messages, "message-table-name", t.Messages, "table of messages")
	fs.StringVar(&o.Tables.LargeMessages, "large-message-table-name", t.LargeMessages, "table of large message chunks")
	fs.StringVar(&o.Tables.Pages, "page-store-table-name", t.Pages, "table of paged messages")
	fs.StringVar(&o.Tables.NodeManager, "node-manager-store-table-name", t.NodeManager, "table of the live lock and fencing epoch")
	fs.StringVar(&o.Tables.DuplicateIDs, "duplicate-ids-table-name", t.DuplicateIDs, "table of idempotency keys")
	fs.StringVar(&o.Tables.Counters, "counter-table-name", t.Counters, "table of queue and page-log counters")
	fs.StringVar(&o.Tables.Migrations, "migrations-table-name", t.Migrations, "table of the schema version")
	fs.StringVar(&o.LogLevel, "log-level", LogLevelDefault, "log level: debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", LogFormatDefault, "log format: text or json")
}

// registerServe binds the options of serve only to fs.
func registerServe(fs *pflag.FlagSet, o *options) {
	o.serve = true
	fs.StringVar(&o.Listen, "listen", ListenDefault, "HTTP listen address HOST:PORT")
	fs.StringVar(&o.NodeName, "node-name", defaultNodeName(), "this instance's name, shown in status and logs; the default is the host name")
	fs.StringVar(&o.HAPolicy, "ha-policy", HAPolicyDefault, "HA policy: none, shared-store-primary or shared-store-backup")
	fs.DurationVar(&o.LockRenewPeriod, "lock-renew-period", LockRenewPeriodDefault, "how often the live renews the live lock")
	fs.DurationVar(&o.LockExpiration, "lock-expiration", LockExpirationDefault, "how long the live lock lasts after a renewal (database clock)")
	fs.DurationVar(&o.BackupPollInterval, "backup-poll-interval", PollIntervalDefault, "how often a waiting instance tries the live lock")
	fs.BoolVar(&o.FailoverOnShutdown, "failover-on-shutdown", false, "a graceful stop of the live hands over to a backup")
	fs.BoolVar(&o.AllowFailback, "allow-failback", false, "a backup that became live hands back when the primary returns")
	fs.BoolVar(&o.RestartBackup, "restart-backup", false, "after handing back, wait as a backup again")
	fs.DurationVar(&o.JournalSyncPeriod, "journal-sync-period", 0, "longest wait to fill a write batch; 0 commits at once")
	fs.IntVar(&o.WriterLanes, "writer-lanes", 0,
		fmt.Sprintf("write transactions in flight at once on PostgreSQL (1..%d; MySQL and SQLite use 1); 0: %d", sqlstore.LanesMax, sqlstore.LanesDefault))
	fs.DurationVar(&o.DuplicateWindow, "duplicate-window", server.DuplicateWindowDefault, "how long idempotency keys are remembered")
	o.MaxMessageSize = server.MaxMessageSizeDefault
	fs.Var(&o.MaxMessageSize, "max-message-size", "largest message body, in bytes (suffixes KiB, MiB, GiB, KB, MB, GB allowed)")
	o.LargeMessageThreshold = server.LargeMessageThresholdDefault
	fs.Var(&o.LargeMessageThreshold, "large-message-threshold",
		"bodies above this many bytes are streamed into chunk rows of the large-messages table and read back with the body endpoint")
	o.LargeChunkSize = server.LargeChunkSizeDefault
	fs.Var(&o.LargeChunkSize, "large-chunk-size", "size in bytes of one chunk row of a large message (4KiB..4MiB)")
	fs.Var(&o.MaxSizeBytes, "max-size-bytes",
		"default size limit of an address (or of a queue published to directly): body bytes of its queues' messages, not paged; 0: none")
	fs.Var(&o.GlobalMaxSize, "global-max-size", "size limit of all queues together; past it every publish applies its full policy; 0: none")
	fs.StringVar(&o.AddressFullPolicy, "address-full-policy", string(server.PolicyPage),
		"default full policy: PAGE (overflow to the page log), BLOCK (publishers wait up to --block-timeout), FAIL (507), DROP")
	fs.DurationVar(&o.BlockTimeout, "block-timeout", server.BlockTimeoutDefault, "longest wait of a publish under the BLOCK policy; then 503")
	fs.IntVar(&o.WindowSize, "window-size", server.WindowSizeDefault, "messages one refill of a queue's in-memory window reads (1..100000)")
	o.WindowBytes = server.WindowBytesDefault
	fs.Var(&o.WindowBytes, "window-bytes", "bytes one refill of a queue's in-memory window reads at most")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", ShutdownTimeoutDefault, "bound on a graceful stop")
	fs.StringVar(&o.PprofListen, "pprof-listen", "",
		"address HOST:PORT serving net/http/pprof on a listener of its own; empty: off")
}

func defaultNodeName() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return NodeNameFallback
	}
	return h
}

// envName returns the environment variable of a flag: TABLEMQ_ followed by the flag
// name in upper case with - as _.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// sources are where option values come from besides the command line; tests replace
// them.
type sources struct {
	// LookupEnv is os.LookupEnv.
	LookupEnv func(string) (string, bool)
	// ReadFile is os.ReadFile.
	ReadFile func(string) ([]byte, error)
	// Environ is os.Environ; nil means an empty environment.
	Environ func() []string
}

// unknownEnv returns the TABLEMQ_ variables of the environment that name no flag, so
// that a typo is reported (as a warning: TABLEMQ_TEST_* and TABLEMQ_BENCH_* belong to
// the tests and the benchmark tool).
func unknownEnv(known map[string]bool, environ func() []string) []string {
	if environ == nil {
		return nil
	}
	names := map[string]bool{}
	for f := range known {
		names[envName(f)] = true
	}
	var out []string
	for _, kv := range environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, envPrefix) || names[k] ||
			strings.HasPrefix(k, envPrefix+"TEST_") || strings.HasPrefix(k, envPrefix+"BENCH_") {
			continue
		}
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// applySources fills every flag of fs that was not given on the command line: from its
// environment variable if that is set, else from the config file if it has the key,
// else the flag keeps its default. So the precedence is flag > environment > config
// file > default. The config file is named by --config, or else by TABLEMQ_CONFIG.
// known lists every flag name of the whole program: a config file key outside it is an
// error (a typo would otherwise be ignored silently), while a key of another command
// (listen, when running migrate) is not.
func applySources(fs *pflag.FlagSet, known map[string]bool, src sources) error {
	// The config file's name comes from the flag or the environment only.
	if cf := fs.Lookup("config"); cf != nil && !cf.Changed {
		if v, ok := src.LookupEnv(envName("config")); ok {
			if err := fs.Set("config", v); err != nil {
				return fmt.Errorf("%s: %w", envName("config"), err)
			}
		}
	}
	var file map[string]string
	var fileName string
	if cf := fs.Lookup("config"); cf != nil && cf.Value.String() != "" {
		fileName = cf.Value.String()
		var err error
		if file, err = readConfigFile(fileName, known, src.ReadFile); err != nil {
			return err
		}
	}

	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "config" || f.Name == "help" {
			return
		}
		if v, ok := src.LookupEnv(envName(f.Name)); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: invalid value %q: %w", envName(f.Name), v, err))
			}
			return
		}
		if v, ok := file[f.Name]; ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("config file %s: %s: invalid value %q: %w", fileName, f.Name, v, err))
			}
		}
	})
	return errors.Join(errs...)
}

// readConfigFile reads a YAML document of flag names to scalar values and returns the
// values as the strings a flag would be given.
func readConfigFile(name string, known map[string]bool, readFile func(string) ([]byte, error)) (map[string]string, error) {
	data, err := readFile(name)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("config file %s: %w", name, err)
	}
	out := make(map[string]string, len(doc))
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := doc[k]
		switch {
		case k == "config":
			return nil, fmt.Errorf("config file %s: key config: a config file cannot name another", name)
		case k == "help" || !known[k]:
			return nil, fmt.Errorf("config file %s: unknown key %q (keys are flag names, e.g. store, listen)", name, k)
		}
		switch x := v.(type) {
		case nil:
			// "key:" with no value leaves the option unset.
		case string:
			out[k] = x
		case bool, int, int64, uint64, float64:
			out[k] = fmt.Sprint(x)
		default:
			return nil, fmt.Errorf("config file %s: key %s: want a single value, got %T", name, k, v)
		}
	}
	return out, nil
}

// flagNames returns the names of every flag of cmd and its subcommands.
func flagNames(cmd *cobra.Command) map[string]bool {
	names := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		add := func(f *pflag.Flag) { names[f.Name] = true }
		c.LocalFlags().VisitAll(add)
		c.PersistentFlags().VisitAll(add)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(cmd)
	return names
}

// validate checks the options, one clear message per rule naming the option, and
// derives store and password. It reads the password file with readFile.
func (o *options) validate(readFile func(string) ([]byte, error)) error {
	o.warnings = nil
	if err := o.validateStore(readFile); err != nil {
		return err
	}
	if o.NetworkTimeout <= 0 {
		return fmt.Errorf("network-timeout: must be positive, got %s", o.NetworkTimeout)
	}
	if err := o.Tables.Validate(); err != nil {
		return err
	}
	if _, err := parseLevel(o.LogLevel); err != nil {
		return err
	}
	switch o.LogFormat {
	case "text", "json":
	default:
		return fmt.Errorf("log-format: want text or json, got %q", o.LogFormat)
	}
	if !o.serve {
		return nil
	}

	_, port, err := net.SplitHostPort(o.Listen) // an empty host means every interface
	if err != nil {
		return fmt.Errorf("listen: want HOST:PORT, got %q", o.Listen)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("listen: invalid port %q in %q", port, o.Listen)
	}
	if strings.TrimSpace(o.NodeName) == "" {
		return errors.New("node-name: must not be empty")
	}
	if len(o.NodeName) > 128 {
		return fmt.Errorf("node-name: at most 128 bytes, got %d", len(o.NodeName))
	}
	ha := o.haConfig()
	if err := ha.Validate(); err != nil {
		return err
	}
	o.warnings = append(o.warnings, ha.Warnings()...)
	if o.JournalSyncPeriod < 0 || o.JournalSyncPeriod > time.Second {
		return fmt.Errorf("journal-sync-period: want 0..1s, got %s", o.JournalSyncPeriod)
	}
	if o.WriterLanes < 0 || o.WriterLanes > sqlstore.LanesMax {
		return fmt.Errorf("writer-lanes: want 0..%d, got %d", sqlstore.LanesMax, o.WriterLanes)
	}
	if o.DuplicateWindow < time.Second {
		return fmt.Errorf("duplicate-window: must be at least 1s, got %s", o.DuplicateWindow)
	}
	if o.MaxMessageSize <= 0 {
		return fmt.Errorf("max-message-size: must be positive, got %d", o.MaxMessageSize)
	}
	if o.MaxMessageSize > MaxMessageSizeLimit {
		return fmt.Errorf("max-message-size: at most %d (64GiB), got %d", MaxMessageSizeLimit, o.MaxMessageSize)
	}
	if o.LargeMessageThreshold <= 0 || o.LargeMessageThreshold > server.LargeMessageThresholdMax {
		return fmt.Errorf("large-message-threshold: must be 1..%d (16MiB), got %d", server.LargeMessageThresholdMax, o.LargeMessageThreshold)
	}
	if o.LargeChunkSize < server.LargeChunkSizeMin || o.LargeChunkSize > server.LargeChunkSizeMax {
		return fmt.Errorf("large-chunk-size: must be %d (4KiB)..%d (4MiB), got %d",
			server.LargeChunkSizeMin, server.LargeChunkSizeMax, o.LargeChunkSize)
	}
	switch server.FullPolicy(strings.ToUpper(o.AddressFullPolicy)) {
	case server.PolicyPage, server.PolicyBlock, server.PolicyFail, server.PolicyDrop:
	default:
		return fmt.Errorf("address-full-policy: want PAGE, BLOCK, FAIL or DROP, got %q", o.AddressFullPolicy)
	}
	if o.BlockTimeout <= 0 {
		return fmt.Errorf("block-timeout: must be positive, got %s", o.BlockTimeout)
	}
	if o.WindowSize < 1 || o.WindowSize > 100_000 {
		return fmt.Errorf("window-size: want 1..100000, got %d", o.WindowSize)
	}
	if o.WindowBytes < 4<<10 {
		return fmt.Errorf("window-bytes: at least 4KiB, got %d", o.WindowBytes)
	}
	if o.ShutdownTimeout <= 0 {
		return fmt.Errorf("shutdown-timeout: must be positive, got %s", o.ShutdownTimeout)
	}
	return o.validatePprof()
}

// haConfig returns the node manager's part of the options.
func (o *options) haConfig() nodemanager.Config {
	return nodemanager.Config{
		NodeName:           o.NodeName,
		Policy:             nodemanager.Policy(o.HAPolicy),
		LockRenewPeriod:    o.LockRenewPeriod,
		LockExpiration:     o.LockExpiration,
		NetworkTimeout:     o.NetworkTimeout,
		PollInterval:       o.BackupPollInterval,
		FailoverOnShutdown: o.FailoverOnShutdown,
		AllowFailback:      o.AllowFailback,
		RestartBackup:      o.RestartBackup,
	}
}

// validateStore checks --store and --store-password-file with the parser Open uses.
func (o *options) validateStore(readFile func(string) ([]byte, error)) error {
	s := strings.TrimSpace(o.Store)
	if s == "" {
		return errors.New("store: must not be empty")
	}
	o.Store = s
	o.password = storePassword(s)
	pw := ""
	if o.StorePasswordFile != "" {
		if strings.HasPrefix(s, "sqlite:") {
			return errors.New("store-password-file: a sqlite store takes no password")
		}
		data, err := readFile(o.StorePasswordFile)
		if err != nil {
			return fmt.Errorf("store-password-file: %w", err)
		}
		// Trimmed as opener.Open trims it.
		if pw = strings.TrimSpace(string(data)); pw == "" {
			return fmt.Errorf("store-password-file: %s is empty", o.StorePasswordFile)
		}
		o.password = pw
	}
	t, err := opener.Parse(s, pw)
	if err != nil {
		return err
	}
	o.store = t
	return nil
}

// storePassword returns the password written in a store URL (or any URL), or "".
func storePassword(s string) string {
	_, rest, ok := strings.Cut(s, "://")
	if !ok {
		return ""
	}
	at := strings.LastIndex(rest, "@")
	if at <= 0 {
		return ""
	}
	userinfo := rest[:at]
	_, pw, _ := strings.Cut(userinfo, ":")
	if u, err := url.Parse(s); err == nil && u.User != nil { // postgres: percent-decoded
		if p, ok := u.User.Password(); ok && p != "" {
			return p
		}
	}
	return pw
}

// scrub replaces every occurrence of secret in msg by xxxxx.
func scrub(msg, secret string) string {
	if secret == "" {
		return msg
	}
	msg = strings.ReplaceAll(msg, secret, "xxxxx")
	if esc := url.QueryEscape(secret); esc != secret {
		msg = strings.ReplaceAll(msg, esc, "xxxxx")
	}
	if esc := url.PathEscape(secret); esc != secret {
		msg = strings.ReplaceAll(msg, esc, "xxxxx")
	}
	return msg
}

// parseLevel parses --log-level.
func parseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("log-level: want debug, info, warn or error, got %q", s)
}

// byteSize is a flag value of bytes with an optional binary or decimal suffix.
type byteSize int64

var byteSuffixes = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30},
	{"B", 1},
}

// String implements pflag.Value.
func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

// Type implements pflag.Value.
func (b *byteSize) Type() string { return "bytes" }

// Set implements pflag.Value.
func (b *byteSize) Set(s string) error {
	t := strings.TrimSpace(s)
	mult := int64(1)
	for _, sfx := range byteSuffixes {
		if strings.HasSuffix(t, sfx.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, sfx.suffix)), sfx.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("want a byte count such as 1048576 or 1MiB, got %q", s)
	}
	if n > (1<<62)/mult {
		return fmt.Errorf("%q is too large", s)
	}
	*b = byteSize(n * mult)
	return nil
}

// joinBoolValues rewrites "--flag true" and "--flag false" into "--flag=true" and
// "--flag=false" for every boolean flag in bools, so that the contract's
// "--failover-on-shutdown BOOL" form works next to pflag's "--failover-on-shutdown" and
// "--failover-on-shutdown=false". No command takes positional arguments, so a lone
// true or false after a boolean flag can only be its value.
func joinBoolValues(args []string, bools map[string]bool) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			out = append(out, args[i:]...)
			break
		}
		if name, ok := strings.CutPrefix(a, "--"); ok && bools[name] && i+1 < len(args) {
			if _, err := strconv.ParseBool(args[i+1]); err == nil {
				out = append(out, a+"="+args[i+1])
				i++
				continue
			}
		}
		out = append(out, a)
	}
	return out
}

// boolFlags returns the names of the boolean flags of cmd and its subcommands.
func boolFlags(cmd *cobra.Command) map[string]bool {
	names := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		add := func(f *pflag.Flag) {
			if f.Value.Type() == "bool" && f.Name != "help" {
				names[f.Name] = true
			}
		}
		c.LocalFlags().VisitAll(add)
		c.PersistentFlags().VisitAll(add)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(cmd)
	return names
}

// Command tablemq is the tablemq message broker.
//
//	tablemq serve          start a broker (the default store is ./data/tablemq.db)
//	tablemq migrate up     bring the store's schema up to date and exit
//	tablemq version        print the version
//
// Every flag can also be set in the environment as TABLEMQ_<NAME> (upper case, - as _)
// and in a YAML file named by --config whose keys are the flag names. A flag on the
// command line wins over the environment, which wins over the config file, which wins
// over the default.
//
// This package only reads options, wires the packages together and handles signals.
//
// # Exit status
//
// 0 after a clean stop on SIGTERM or SIGINT. 1 when start-up fails (bad option,
// unreachable store, schema newer than the binary): stderr then holds exactly one line,
// "tablemq: <reason>" (log lines written during start-up are held back and dropped,
// unless --log-level is debug). 1 also when a running broker stops on its own: when
// another instance took over the store and fenced this one (a supervisor restarts it,
// and in the spine the restarted instance in turn fences the other: do not run two
// instances with ha-policy none on one store), when its listener fails, or when a
// graceful stop did not finish within --shutdown-timeout.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, stop, os.Args[1:], os.Stdout, os.Stderr, sources{LookupEnv: os.LookupEnv, ReadFile: os.ReadFile, Environ: os.Environ})
	stop()
	os.Exit(code)
}

// app is one run of the program. Tests build their own with other sources and with
// serve and migrate replaced.
type app struct {
	stdout, stderr io.Writer
	src            sources
	// stopSignals restores the default signal handling, so that a second SIGINT during
	// a graceful stop kills the process. May be nil.
	stopSignals func()

	// serve and migrate run once the options are valid.
	serve   func(ctx context.Context, a *app, o *options) error
	migrate func(ctx context.Context, a *app, o *options) error

	// opts are the options of the command that ran, for scrubbing the password from
	// its error.
	opts *options
}

// run executes the command line args and returns the exit status.
func run(ctx context.Context, stopSignals func(), args []string, stdout, stderr io.Writer, src sources) int {
	a := &app{stdout: stdout, stderr: stderr, src: src, stopSignals: stopSignals, serve: runServe, migrate: runMigrate}
	return a.execute(ctx, args)
}

// execute runs args and prints a failure as one line on stderr.
func (a *app) execute(ctx context.Context, args []string) int {
	root := a.rootCmd()
	root.SetArgs(joinBoolValues(args, boolFlags(root)))
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	err := root.ExecuteContext(ctx)
	if err == nil || (ctx.Err() != nil && errors.Is(err, context.Canceled)) {
		// A signal during start-up is a stop too, not a failure.
		return 0
	}
	msg := err.Error()
	if a.opts != nil {
		msg = scrub(msg, a.opts.password)
	}
	fmt.Fprintf(a.stderr, "tablemq: %s\n", oneLine(msg))
	return 1
}

// oneLine joins the non-empty lines of s with single spaces.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " ")
}

// rootCmd builds the command tree.
func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "tablemq",
		Short: "tablemq is a message broker whose whole state lives in one SQL database",
		Long: "tablemq is a message broker whose whole state lives in one SQL database:\n" +
			"PostgreSQL, MySQL/MariaDB or an embedded SQLite file.\n\n" +
			"Every flag can also be set as the environment variable TABLEMQ_<NAME> (upper case, - as _)\n" +
			"and in the YAML file given by --config (keys are flag names).\n" +
			"Precedence: flag > environment > config file > default.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return cmd.Help()
		},
	}
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return err })

	var serveOpts options
	serve := &cobra.Command{
		Use:   "serve",
		Short: "Start a broker",
		Long: "Start a broker. With no flags it runs on the embedded SQLite store " + StoreDefault +
			"\nand listens on " + ListenDefault + ". It applies the schema migrations first.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.prepare(cmd, &serveOpts); err != nil {
				return err
			}
			return a.serve(cmd.Context(), a, &serveOpts)
		},
	}
	registerCommon(serve.Flags(), &serveOpts)
	registerServe(serve.Flags(), &serveOpts)

	migrate := &cobra.Command{
		Use:   "migrate",
		Short: "Manage the store's schema",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			return errors.New("migrate: want a subcommand: up")
		},
	}
	var migrateOpts options
	up := &cobra.Command{
		Use:   "up",
		Short: "Apply every schema migration the store lacks, then exit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.prepare(cmd, &migrateOpts); err != nil {
				return err
			}
			return a.migrate(cmd.Context(), a, &migrateOpts)
		},
	}
	registerCommon(up.Flags(), &migrateOpts)
	migrate.AddCommand(up)

	ver := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), versionString())
		},
	}

	root.AddCommand(serve, migrate, ver)
	return root
}

// prepare merges the environment and the config file into the flags of cmd and
// validates the result.
func (a *app) prepare(cmd *cobra.Command, o *options) error {
	a.opts = o
	known := flagNames(cmd.Root())
	if err := applySources(cmd.Flags(), known, a.src); err != nil {
		return err
	}
	if err := o.validate(a.src.ReadFile); err != nil {
		return err
	}
	for _, k := range unknownEnv(known, a.src.Environ) {
		o.warnings = append(o.warnings, fmt.Sprintf("environment variable %s names no option: ignored", k))
	}
	return nil
}

// versionString describes this build.
func versionString() string {
	v := version
	if v == "dev" {
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	return fmt.Sprintf("tablemq %s (%s, %s/%s)", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

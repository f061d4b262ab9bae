package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tablemq/tablemq/sqlstore"
	"github.com/tablemq/tablemq/sqlstore/opener"
)

// openStore opens the store of o and brings its schema up to date.
func openStore(ctx context.Context, o *options, log *slog.Logger) (sqlstore.Driver, error) {
	octx, cancel := context.WithTimeout(ctx, o.NetworkTimeout)
	drv, err := opener.Open(octx, o.Store, opener.Options{
		Tables:       o.Tables,
		PasswordFile: o.StorePasswordFile,
		Logger:       log.With("component", "store"),
	})
	cancel()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("no answer within network-timeout (%s): %w", o.NetworkTimeout, err)
		}
		return nil, err // opener's errors read "open store URL: cause", without the password
	}
	mctx, cancel := context.WithTimeout(ctx, migrateTimeout)
	err = drv.Migrate(mctx)
	cancel()
	if err != nil {
		_ = drv.Close()
		if errors.Is(err, sqlstore.ErrSchemaTooNew) && !strings.Contains(err.Error(), "newer") {
			return nil, fmt.Errorf("migrate store: the schema is newer than this tablemq (%s); upgrade tablemq: %w", version, err)
		}
		return nil, fmt.Errorf("migrate store: %w", err)
	}
	return drv, nil
}

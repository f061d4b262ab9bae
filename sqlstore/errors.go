package sqlstore

import (
	"errors"

	"github.com/tablemq/tablemq/migrations"
)

// Sentinel errors. Every driver maps its own errors to these in one place, so callers
// only ever use errors.Is.
var (
	// ErrNotFound means the row asked for does not exist.
	ErrNotFound = errors.New("sqlstore: not found")
	// ErrConflict means a write collided with an existing row (a unique violation).
	ErrConflict = errors.New("sqlstore: conflict")
	// ErrFenced means the fencing epoch in the database is no longer the writer's own:
	// another broker took over, and this one must not write again.
	ErrFenced = errors.New("sqlstore: fenced: the fencing epoch has moved on")
	// ErrClosed means the store or writer was closed.
	ErrClosed = errors.New("sqlstore: closed")
	// ErrSchemaTooNew means the database schema was written by a newer tablemq.
	ErrSchemaTooNew = migrations.ErrSchemaTooNew
)

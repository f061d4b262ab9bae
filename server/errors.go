package server

import (
	"errors"
	"fmt"
)

// Sentinel errors of the broker core. The HTTP layer maps each to a status and a stable
// error code in one catalog; wrap them with fmt.Errorf("...: %w", Err...) to add detail.
var (
	// ErrInvalid means the request is malformed or out of range (HTTP 400).
	ErrInvalid = errors.New("invalid request")
	// ErrQueueNotFound means the queue does not exist (HTTP 404).
	ErrQueueNotFound = errors.New("queue not found")
	// ErrAddressNotFound means the address does not exist (HTTP 404).
	ErrAddressNotFound = errors.New("address not found")
	// ErrBindingNotFound means the binding does not exist (HTTP 404).
	ErrBindingNotFound = errors.New("binding not found")
	// ErrConflict means the object exists with other settings, or the operation
	// contradicts the current state (HTTP 409).
	ErrConflict = errors.New("conflict")
	// ErrTooLarge means a message or batch exceeds a configured limit (HTTP 413).
	ErrTooLarge = errors.New("too large")
	// ErrNotLive means this instance is not the live broker or is stopping (HTTP 503
	// with Retry-After).
	ErrNotLive = errors.New("not live")
	// ErrUnavailable means the store failed; the operation may be retried (HTTP 503).
	ErrUnavailable = errors.New("store unavailable")
	// ErrAddressFull means the address (or queue) is past its max size under
	// PolicyFail (HTTP 507).
	ErrAddressFull = errors.New("address full")
	// ErrPublishBlocked means a publish waited the block timeout for room under
	// PolicyBlock (HTTP 503 with Retry-After).
	ErrPublishBlocked = errors.New("address full: publish blocked until the timeout")
)

// invalidf returns an ErrInvalid with a message.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// Per-receipt errors, reported in ReceiptResult.Err (never as a failure of the whole
// call).
var (
	// ErrReceiptUnknown means no message is leased under this receipt: it was acked
	// already, its lease ended, or it never existed.
	ErrReceiptUnknown = errors.New("receipt unknown or expired")
	// ErrReceiptStale means the message was delivered again since this receipt was
	// issued; only the newest delivery's receipt is valid.
	ErrReceiptStale = errors.New("receipt stale: the message was delivered again")
	// ErrReceiptInvalid means the receipt is malformed.
	ErrReceiptInvalid = errors.New("receipt malformed")
)

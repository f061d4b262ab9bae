package httpapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/tablemq/tablemq/server"
)

// Stable error codes of the API. A code never changes once released; messages may.
const (
	CodeInvalidRequest   = "invalid_request"
	CodeQueueNotFound    = "queue_not_found"
	CodeAddressNotFound  = "address_not_found"
	CodeBindingNotFound  = "binding_not_found"
	CodeConflict         = "conflict"
	CodeTooLarge         = "too_large"
	CodeNotLive          = "not_live"
	CodeAddressFull      = "address_full"
	CodePublishBlocked   = "publish_blocked"
	CodeUnavailable      = "unavailable"
	CodeReceiptUnknown   = "receipt_unknown"
	CodeReceiptStale     = "receipt_stale"
	CodeReceiptInvalid   = "receipt_invalid"
	CodeNotFound         = "not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeInternal         = "internal"
)

// retryAfterSeconds is the Retry-After value sent with every 503.
const retryAfterSeconds = "1"

// catalogEntry maps one sentinel error to its status and stable code.
type catalogEntry struct {
	err    error
	status int
	code   string
}

// catalog is the one table from sentinel errors to HTTP status and stable code. The
// first entry whose sentinel matches (errors.Is) wins. Anything not listed is a 500
// "internal" error whose detail is logged, never shown.
//
// Per-receipt errors carry status 200: they are reported inside a successful answer.
var catalog = []catalogEntry{
	{server.ErrInvalid, http.StatusBadRequest, CodeInvalidRequest},
	{server.ErrQueueNotFound, http.StatusNotFound, CodeQueueNotFound},
	{server.ErrAddressNotFound, http.StatusNotFound, CodeAddressNotFound},
	{server.ErrBindingNotFound, http.StatusNotFound, CodeBindingNotFound},
	{server.ErrConflict, http.StatusConflict, CodeConflict},
	{server.ErrTooLarge, http.StatusRequestEntityTooLarge, CodeTooLarge},
	{server.ErrNotLive, http.StatusServiceUnavailable, CodeNotLive},
	{server.ErrAddressFull, http.StatusInsufficientStorage, CodeAddressFull},
	{server.ErrPublishBlocked, http.StatusServiceUnavailable, CodePublishBlocked},
	{server.ErrUnavailable, http.StatusServiceUnavailable, CodeUnavailable},
	{server.ErrReceiptUnknown, http.StatusOK, CodeReceiptUnknown},
	{server.ErrReceiptStale, http.StatusOK, CodeReceiptStale},
	{server.ErrReceiptInvalid, http.StatusOK, CodeReceiptInvalid},
	{errRouteNotFound, http.StatusNotFound, CodeNotFound},
	{errMethodNotAllowed, http.StatusMethodNotAllowed, CodeMethodNotAllowed},
	// A client that went away or a request deadline: the operation may be retried.
	{context.Canceled, http.StatusServiceUnavailable, CodeUnavailable},
	{context.DeadlineExceeded, http.StatusServiceUnavailable, CodeUnavailable},
}

// Sentinels of the HTTP layer itself (not of the broker core).
var (
	errRouteNotFound    = errors.New("no such route")
	errMethodNotAllowed = errors.New("method not allowed")
)

// ErrorBody is the JSON shape of every error answer:
// {"error": {"code": "...", "message": "..."}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is a stable code and a human-readable message. It is also used for
// per-message and per-receipt errors inside successful answers.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// classify returns the status, the stable code and the message shown to the client
// for err. internal is true for errors outside the catalog, whose detail must be
// logged instead of shown.
func classify(err error) (status int, detail ErrorDetail, internal bool) {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return http.StatusRequestEntityTooLarge, ErrorDetail{
			Code:    CodeTooLarge,
			Message: fmt.Sprintf("request body exceeds %d bytes", mbe.Limit),
		}, false
	}
	for _, e := range catalog {
		if errors.Is(err, e.err) {
			return e.status, ErrorDetail{Code: e.code, Message: err.Error()}, false
		}
	}
	return http.StatusInternalServerError, ErrorDetail{Code: CodeInternal, Message: "internal error"}, true
}

// errorDetail is the per-item form of an error (for batch publish and receipt
// results). Internal errors are logged.
func (a *api) errorDetail(r *http.Request, err error) ErrorDetail {
	_, d, internal := classify(err)
	if internal {
		a.log.ErrorContext(r.Context(), "internal error", "request_id", requestIDFrom(r.Context()),
			"method", r.Method, "path", r.URL.Path, "err", err)
	}
	return d
}

// writeError writes err as a JSON error body with the status of the catalog. It is
// the only function that writes an error answer.
func (a *api) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, d, internal := classify(err)
	if status == http.StatusOK { // a per-receipt error used as a whole answer: bad input
		status = http.StatusBadRequest
	}
	switch {
	case internal:
		a.log.ErrorContext(r.Context(), "internal error", "request_id", requestIDFrom(r.Context()),
			"method", r.Method, "path", r.URL.Path, "err", err)
	case errors.Is(err, context.Canceled):
		a.log.DebugContext(r.Context(), "request canceled", "request_id", requestIDFrom(r.Context()),
			"method", r.Method, "path", r.URL.Path)
	}
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfterSeconds)
	}
	writeJSON(w, status, ErrorBody{Error: d})
}

// invalidError is a validation error of the HTTP layer. Its message is shown as is;
// it matches server.ErrInvalid.
type invalidError struct{ msg string }

func (e *invalidError) Error() string { return e.msg }
func (e *invalidError) Unwrap() error { return server.ErrInvalid }

// invalidf returns a 400 invalid_request error with a formatted message.
func invalidf(format string, args ...any) error {
	return &invalidError{msg: fmt.Sprintf(format, args...)}
}

// tooLargeError is a size error of the HTTP layer; it matches server.ErrTooLarge.
type tooLargeError struct{ msg string }

func (e *tooLargeError) Error() string { return e.msg }
func (e *tooLargeError) Unwrap() error { return server.ErrTooLarge }

// tooLargef returns a 413 too_large error with a formatted message.
func tooLargef(format string, args ...any) error {
	return &tooLargeError{msg: fmt.Sprintf(format, args...)}
}

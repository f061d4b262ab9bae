package client

import (
	"errors"
	"fmt"
	"net/http"
)

// Stable error codes of the tablemq API (the "code" of an error body or of a
// per-message or per-receipt error).
const (
	CodeInvalidRequest   = "invalid_request"
	CodeNotFound         = "not_found"
	CodeQueueNotFound    = "queue_not_found"
	CodeAddressNotFound  = "address_not_found"
	CodeBindingNotFound  = "binding_not_found"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeConflict         = "conflict"
	CodeTooLarge         = "too_large"
	CodeNotLive          = "not_live"
	CodeUnavailable      = "unavailable"
	CodeInternal         = "internal"
	CodeReceiptUnknown   = "receipt_unknown"
	CodeReceiptStale     = "receipt_stale"
	CodeReceiptInvalid   = "receipt_invalid"
)

// Sentinel errors. An *APIError matches (errors.Is) the sentinels of its code, and
// of its HTTP status when the code is one this package does not know.
var (
	// ErrInvalid matches a 400 invalid_request answer (bad input), and errors of
	// this package for input it refuses before sending anything.
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound matches every 404 answer: an unknown queue, address, binding or
	// route.
	ErrNotFound = errors.New("not found")
	// ErrQueueNotFound matches a 404 queue_not_found answer (it also matches ErrNotFound).
	ErrQueueNotFound = errors.New("queue not found")
	// ErrAddressNotFound matches a 404 address_not_found answer (it also matches ErrNotFound).
	ErrAddressNotFound = errors.New("address not found")
	// ErrBindingNotFound matches a 404 binding_not_found answer (it also matches ErrNotFound).
	ErrBindingNotFound = errors.New("binding not found")
	// ErrConflict matches a 409 conflict answer: the object exists with other
	// settings, or the call contradicts the current state.
	ErrConflict = errors.New("conflict")
	// ErrTooLarge matches a 413 too_large answer: a body, message or batch exceeds
	// its limit.
	ErrTooLarge = errors.New("too large")
	// ErrNotLive matches a 503 not_live answer: the instance is not the live broker.
	// The client retries these on the other URLs; a call returns it only when no
	// live broker was found before its retry deadline.
	ErrNotLive = errors.New("not live")
	// ErrUnavailable matches a 503 unavailable answer (the store or the broker is
	// unavailable for now) and a call that failed because no broker could be reached
	// (connection errors, timeouts). Like ErrNotLive it is retried first.
	ErrUnavailable = errors.New("unavailable")
	// ErrInternal matches a 500 internal answer. It is not retried.
	ErrInternal = errors.New("internal broker error")
	// ErrReceiptUnknown matches a per-receipt receipt_unknown error: no message is
	// leased under this receipt (it was acked already, its lease ended, or a
	// failover dropped it). See Client.Ack for what it means after a retry.
	ErrReceiptUnknown = errors.New("receipt unknown or expired")
	// ErrReceiptStale matches a per-receipt receipt_stale error: the message was
	// delivered again since this receipt was issued.
	ErrReceiptStale = errors.New("receipt stale")
	// ErrReceiptInvalid matches a per-receipt receipt_invalid error: the receipt is
	// malformed.
	ErrReceiptInvalid = errors.New("receipt invalid")
)

// codeSentinels lists the sentinels each known code matches.
var codeSentinels = map[string][]error{
	CodeInvalidRequest:   {ErrInvalid},
	CodeNotFound:         {ErrNotFound},
	CodeQueueNotFound:    {ErrQueueNotFound, ErrNotFound},
	CodeAddressNotFound:  {ErrAddressNotFound, ErrNotFound},
	CodeBindingNotFound:  {ErrBindingNotFound, ErrNotFound},
	CodeMethodNotAllowed: {},
	CodeConflict:         {ErrConflict},
	CodeTooLarge:         {ErrTooLarge},
	CodeNotLive:          {ErrNotLive},
	CodeUnavailable:      {ErrUnavailable},
	CodeInternal:         {ErrInternal},
	CodeReceiptUnknown:   {ErrReceiptUnknown},
	CodeReceiptStale:     {ErrReceiptStale},
	CodeReceiptInvalid:   {ErrReceiptInvalid},
}

// statusSentinels is the fallback for codes this package does not know (a newer
// broker, or a proxy in front of it that answers without a tablemq error body).
var statusSentinels = map[int]error{
	http.StatusBadRequest:            ErrInvalid,
	http.StatusNotFound:              ErrNotFound,
	http.StatusConflict:              ErrConflict,
	http.StatusRequestEntityTooLarge: ErrTooLarge,
	http.StatusInternalServerError:   ErrInternal,
	http.StatusBadGateway:            ErrUnavailable,
	http.StatusServiceUnavailable:    ErrUnavailable,
	http.StatusGatewayTimeout:        ErrUnavailable,
}

// APIError is an error answered by a broker: the HTTP status and the stable code and
// message of its error body. Per-message results of a batch publish and per-receipt
// results carry an *APIError with Status 0 (they are parts of a successful answer).
//
// Use errors.Is with the sentinels of this package (ErrNotFound, ErrConflict, ...)
// rather than comparing codes.
type APIError struct {
	// Status is the HTTP status of the answer; 0 for a per-item error.
	Status int
	// Code is the stable error code, e.g. "queue_not_found".
	Code string
	// Message is the broker's human-readable message.
	Message string
	// URL is the broker base URL that answered ("" for a per-item error).
	URL string
}

// Error implements error.
func (e *APIError) Error() string {
	switch {
	case e.Status == 0:
		return fmt.Sprintf("tablemq: %s: %s", e.Code, e.Message)
	case e.Code == "":
		return fmt.Sprintf("tablemq: HTTP %d: %s", e.Status, e.Message)
	default:
		return fmt.Sprintf("tablemq: HTTP %d %s: %s", e.Status, e.Code, e.Message)
	}
}

// Is reports whether target is one of the sentinels matching e's code (or, for an
// unknown code, its status).
func (e *APIError) Is(target error) bool {
	if ss, ok := codeSentinels[e.Code]; ok {
		for _, s := range ss {
			if s == target {
				return true
			}
		}
		return false
	}
	s, ok := statusSentinels[e.Status]
	return ok && s == target
}

// retryable reports whether the answer means "try another instance or later": a 503
// (not_live or unavailable) or a gateway error of a proxy in front of a broker.
func (e *APIError) retryable() bool {
	switch e.Status {
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// transportError is a failed attempt that got no answer: a connection error, an
// answer cut off, or the request timeout. It matches ErrUnavailable.
type transportError struct {
	url string
	err error
}

func (e *transportError) Error() string { return fmt.Sprintf("tablemq: %s: %v", e.url, e.err) }
func (e *transportError) Unwrap() error { return e.err }

// Is makes a transport error match ErrUnavailable.
func (e *transportError) Is(target error) bool { return target == ErrUnavailable }

// errorBody is the JSON shape of an error answer.
type errorBody struct {
	Error *errorDetail `json:"error"`
}

// errorDetail is a code and a message, also used inside per-item results.
type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// itemError turns a per-item error detail into an *APIError (nil for nil).
func itemError(d *errorDetail) error {
	if d == nil {
		return nil
	}
	return &APIError{Code: d.Code, Message: d.Message}
}

// invalidf is an error of this package for input refused before sending; it matches
// ErrInvalid.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("tablemq: %s: %w", fmt.Sprintf(format, args...), ErrInvalid)
}

package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/tablemq/tablemq/server"
)

// readBody reads the whole body of r, at most limit bytes (413 too_large beyond).
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	// Sized once from Content-Length when the client sent one within the limit:
	// io.ReadAll would grow a batch of 140 KB through a dozen copies.
	var buf bytes.Buffer
	if n := r.ContentLength; n > 0 && n <= limit {
		buf.Grow(int(n) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	body := buf.Bytes()
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: reading the request body: %w", server.ErrInvalid, err)
	}
	return body, nil
}

// decodeStrict decodes data, which must hold exactly one JSON value, into v.
// Unknown fields and wrong types are errors whose message names the field. An empty
// (or all-whitespace) body is allowed only when optional is true; v is then left as
// is.
func decodeStrict(data []byte, v any, optional bool) error {
	if len(bytes.TrimSpace(data)) == 0 {
		if optional {
			return nil
		}
		return invalidf("request body: a JSON object is required")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return jsonError(err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return invalidf("request body: must hold exactly one JSON value")
	}
	return nil
}

// jsonError turns an encoding/json error into a 400 whose message names the field
// or the offset.
func jsonError(err error) error {
	var (
		syn *json.SyntaxError
		typ *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &syn):
		return invalidf("malformed JSON at byte %d: %s", syn.Offset, syn.Error())
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return invalidf("malformed JSON: unexpected end of input")
	case errors.As(err, &typ):
		if typ.Field == "" {
			return invalidf("request body: expected %s, got %s", jsonTypeName(typ.Type.Kind().String()), typ.Value)
		}
		return invalidf("field %q: expected %s, got %s", typ.Field, jsonTypeName(typ.Type.Kind().String()), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return invalidf("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	default:
		return invalidf("invalid JSON: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
}

// jsonTypeName names a Go kind in JSON terms.
func jsonTypeName(kind string) string {
	switch kind {
	case "int", "int8", "int16", "int32", "int64", "uint", "uint8", "uint16", "uint32", "uint64":
		return "an integer"
	case "float32", "float64":
		return "a number"
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "slice", "array":
		return "an array"
	case "map", "struct":
		return "an object"
	default:
		return kind
	}
}

// validName reports whether s is a valid queue or address name. The rule is the
// server's (server.ValidName): ^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$.
func validName(s string) bool {
	return server.ValidName(s) == nil
}

// checkName returns a 400 naming what when s is not a valid name.
func checkName(what, s string) error {
	if !validName(s) {
		return invalidf("%s %q: invalid name: use 1 to %d characters A-Z a-z 0-9 . _ -, starting with a letter or digit",
			what, truncate(s, 64), server.NameMaxLen)
	}
	return nil
}

// truncate shortens s for an error message.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// durationRange is the allowed range of one duration field.
type durationRange struct {
	min, max time.Duration
	// zeroOK allows 0 ("unset") below min.
	zeroOK bool
}

// Ranges of the duration fields of the API.
var (
	waitRange         = durationRange{min: 0, max: server.ReceiveWaitLimit}
	leaseRange        = durationRange{min: server.LeaseMin, max: server.LeaseMax, zeroOK: true}
	extendLeaseRange  = durationRange{min: server.LeaseMin, max: server.LeaseMax}
	nackDelayRange    = durationRange{min: 0, max: server.NackDelayMax}
	publishDelayRange = durationRange{min: 0, max: server.PublishDelayMax}
	ttlRange          = durationRange{min: 0, max: server.TTLMax}
)

// parseDuration parses s (a Go duration such as "1.5s") for field and checks it
// against rg. The error names the field and the range.
func parseDuration(field, s string, rg durationRange) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, invalidf("%s: %q is not a duration (a Go duration such as \"500ms\", \"30s\", \"5m\", \"48h\")", field, truncate(s, 64))
	}
	if d == 0 && rg.zeroOK {
		return 0, nil
	}
	if d < rg.min || d > rg.max {
		return 0, invalidf("%s: %s is out of range %s..%s", field, shortDuration(d), fmtDuration(rg.min), fmtDuration(rg.max))
	}
	return d, nil
}

// optDuration parses an optional duration field; nil means 0.
func optDuration(field string, s *string, rg durationRange) (time.Duration, error) {
	if s == nil {
		return 0, nil
	}
	return parseDuration(field, *s, rg)
}

// fmtDuration prints a range bound, with days where it is a whole number of them:
// "30s", "12h", "7d (168h)".
func fmtDuration(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd (%s)", d/(24*time.Hour), shortDuration(d))
	}
	return shortDuration(d)
}

// shortDuration prints d without zero minutes and seconds: "12h", "1h30m", "2m".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// receiveRequest is the body of POST /v1/queues/{queue}/receive.
type receiveRequest struct {
	Max   *int    `json:"max"`
	Wait  *string `json:"wait"`
	Lease *string `json:"lease"`
}

// decodeReceive decodes and validates a receive body (empty means all defaults).
func decodeReceive(data []byte) (server.ReceiveParams, error) {
	var req receiveRequest
	if err := decodeStrict(data, &req, true); err != nil {
		return server.ReceiveParams{}, err
	}
	p := server.ReceiveParams{Max: 1}
	if req.Max != nil {
		if *req.Max < 1 || *req.Max > server.ReceiveMaxLimit {
			return server.ReceiveParams{}, invalidf("max: %d is out of range 1..%d", *req.Max, server.ReceiveMaxLimit)
		}
		p.Max = *req.Max
	}
	var err error
	if p.Wait, err = optDuration("wait", req.Wait, waitRange); err != nil {
		return server.ReceiveParams{}, err
	}
	if p.Lease, err = optDuration("lease", req.Lease, leaseRange); err != nil {
		return server.ReceiveParams{}, err
	}
	return p, nil
}

// receiptsRequest is the body of ack, nack and extend.
type receiptsRequest struct {
	Receipts []string `json:"receipts"`
	Delay    *string  `json:"delay,omitempty"` // nack only
	Lease    *string  `json:"lease,omitempty"` // extend only
}

// receiptOp names the three receipt operations.
type receiptOp string

const (
	opAck    receiptOp = "ack"
	opNack   receiptOp = "nack"
	opExtend receiptOp = "extend"
)

// decodeReceipts decodes and validates the body of op. It returns the receipts and
// the nack delay or the extend lease.
func decodeReceipts(data []byte, op receiptOp) ([]string, time.Duration, error) {
	var req receiptsRequest
	if err := decodeStrict(data, &req, false); err != nil {
		return nil, 0, err
	}
	if len(req.Receipts) == 0 {
		return nil, 0, invalidf("receipts: must hold 1..%d receipts, got none", server.ReceiveMaxLimit)
	}
	if len(req.Receipts) > server.ReceiveMaxLimit {
		return nil, 0, tooLargef("receipts: %d receipts in one call, at most %d", len(req.Receipts), server.ReceiveMaxLimit)
	}
	var d time.Duration
	var err error
	switch op {
	case opAck:
		if req.Delay != nil {
			return nil, 0, invalidf("unknown field \"delay\" (only nack takes a delay)")
		}
		if req.Lease != nil {
			return nil, 0, invalidf("unknown field \"lease\" (only extend takes a lease)")
		}
	case opNack:
		if req.Lease != nil {
			return nil, 0, invalidf("unknown field \"lease\" (only extend takes a lease)")
		}
		d, err = optDuration("delay", req.Delay, nackDelayRange)
	case opExtend:
		if req.Delay != nil {
			return nil, 0, invalidf("unknown field \"delay\" (only nack takes a delay)")
		}
		if req.Lease == nil {
			return nil, 0, invalidf("lease: required (%s..%s)", fmtDuration(extendLeaseRange.min), fmtDuration(extendLeaseRange.max))
		}
		d, err = parseDuration("lease", *req.Lease, extendLeaseRange)
	}
	if err != nil {
		return nil, 0, err
	}
	return req.Receipts, d, nil
}

// queueConfigJSON is the JSON form of server.QueueConfig, durations as strings.
type queueConfigJSON struct {
	MaxDeliveries   *int    `json:"max_deliveries,omitempty"`
	DeadLetterQueue *string `json:"dead_letter_queue,omitempty"`
	Lease           *string `json:"lease,omitempty"`
	TTL             *string `json:"ttl,omitempty"`
	limitsJSON
}

// limitsJSON is the size limit of a queue or an address (server.Limits).
type limitsJSON struct {
	MaxSizeBytes *int64  `json:"max_size_bytes,omitempty"`
	FullPolicy   *string `json:"address_full_policy,omitempty"`
}

// decode validates the limits.
func (l limitsJSON) decode() (server.Limits, error) {
	var out server.Limits
	if l.MaxSizeBytes != nil {
		if *l.MaxSizeBytes < -1 {
			return out, invalidf("max_size_bytes: %d must be -1 (no limit), 0 (the broker default) or positive", *l.MaxSizeBytes)
		}
		out.MaxSizeBytes = *l.MaxSizeBytes
	}
	if l.FullPolicy != nil {
		switch p := server.FullPolicy(*l.FullPolicy); p {
		case "", server.PolicyPage, server.PolicyBlock, server.PolicyFail, server.PolicyDrop:
			out.FullPolicy = p
		default:
			return out, invalidf("address_full_policy: %q is not one of PAGE, BLOCK, FAIL, DROP", truncate(*l.FullPolicy, 64))
		}
	}
	return out, nil
}

func encodeLimits(l server.Limits) limitsJSON {
	var out limitsJSON
	if l.MaxSizeBytes != 0 {
		out.MaxSizeBytes = &l.MaxSizeBytes
	}
	if l.FullPolicy != "" {
		p := string(l.FullPolicy)
		out.FullPolicy = &p
	}
	return out
}

// decodeQueueConfig decodes and validates the optional body of PUT /v1/queues/{queue}.
func decodeQueueConfig(data []byte) (server.QueueConfig, error) {
	var req queueConfigJSON
	if err := decodeStrict(data, &req, true); err != nil {
		return server.QueueConfig{}, err
	}
	var cfg server.QueueConfig
	if req.MaxDeliveries != nil {
		if *req.MaxDeliveries < 0 || *req.MaxDeliveries > server.MaxDeliveriesLimit {
			return cfg, invalidf("max_deliveries: %d is out of range 0..%d (0 means unlimited)", *req.MaxDeliveries, server.MaxDeliveriesLimit)
		}
		cfg.MaxDeliveries = *req.MaxDeliveries
	}
	if req.DeadLetterQueue != nil && *req.DeadLetterQueue != "" {
		if err := checkName("dead_letter_queue", *req.DeadLetterQueue); err != nil {
			return cfg, err
		}
		cfg.DeadLetterQueue = *req.DeadLetterQueue
	}
	var err error
	if cfg.Lease, err = optDuration("lease", req.Lease, leaseRange); err != nil {
		return cfg, err
	}
	if cfg.TTL, err = optDuration("ttl", req.TTL, ttlRange); err != nil {
		return cfg, err
	}
	if cfg.Limits, err = req.limitsJSON.decode(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// encodeQueueConfig is the JSON form of cfg shown by GET; unset fields are left out.
func encodeQueueConfig(cfg server.QueueConfig) queueConfigJSON {
	var out queueConfigJSON
	if cfg.MaxDeliveries != 0 {
		out.MaxDeliveries = &cfg.MaxDeliveries
	}
	if cfg.DeadLetterQueue != "" {
		out.DeadLetterQueue = &cfg.DeadLetterQueue
	}
	if cfg.Lease != 0 {
		s := cfg.Lease.String()
		out.Lease = &s
	}
	if cfg.TTL != 0 {
		s := cfg.TTL.String()
		out.TTL = &s
	}
	out.limitsJSON = encodeLimits(cfg.Limits)
	return out
}

// addressConfigJSON is the body of PUT /v1/addresses/{address}.
type addressConfigJSON struct {
	Routing *string `json:"routing"`
	limitsJSON
}

// decodeAddressConfig decodes and validates the body of PUT /v1/addresses/{address}.
func decodeAddressConfig(data []byte) (server.AddressConfig, error) {
	var req addressConfigJSON
	if err := decodeStrict(data, &req, true); err != nil {
		return server.AddressConfig{}, err
	}
	if req.Routing == nil {
		return server.AddressConfig{}, invalidf("routing: required, one of %q, %q", server.Anycast, server.Multicast)
	}
	switch rt := server.RoutingType(*req.Routing); rt {
	case server.Anycast, server.Multicast:
		lim, err := req.limitsJSON.decode()
		if err != nil {
			return server.AddressConfig{}, err
		}
		return server.AddressConfig{Routing: rt, Limits: lim}, nil
	default:
		return server.AddressConfig{}, invalidf("routing: %q is not one of %q, %q", truncate(*req.Routing, 64), server.Anycast, server.Multicast)
	}
}

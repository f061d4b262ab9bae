package httpapi

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablemq/tablemq/server"
)

// Defaults of Config.
const (
	// MaxRequestBytesDefault bounds a JSON request body (other than a batch publish).
	MaxRequestBytesDefault = 1 << 20
	// MaxBatchBytesDefault bounds a batch publish body (base64 inflates data by 4/3).
	MaxBatchBytesDefault = 64 << 20
)

// Broker is the part of *server.Server the HTTP API uses. Tests may substitute it.
type Broker interface {
	Role() server.Role
	ClusterStatus() server.ClusterStatus

	QueueCreate(ctx context.Context, name string, cfg server.QueueConfig) (created bool, err error)
	QueueGet(ctx context.Context, name string) (server.QueueInfo, error)
	QueueList(ctx context.Context) ([]server.QueueInfo, error)
	QueueDelete(ctx context.Context, name string) error
	QueuePurge(ctx context.Context, name string) (int64, error)

	AddressCreate(ctx context.Context, name string, cfg server.AddressConfig) (created bool, err error)
	AddressGet(ctx context.Context, name string) (server.AddressInfo, error)
	AddressList(ctx context.Context) ([]server.AddressInfo, error)
	AddressDelete(ctx context.Context, name string) error
	BindingCreate(ctx context.Context, address, queue string) (created bool, err error)
	BindingDelete(ctx context.Context, address, queue string) error

	PublishQueue(ctx context.Context, queue string, msgs []server.Message) ([]server.PublishResult, error)
	PublishAddress(ctx context.Context, address string, msgs []server.Message) ([]server.PublishResult, error)
	// Large messages (large.go).
	PublishStream(ctx context.Context, queue string, m server.Message, body io.Reader) (server.PublishResult, error)
	PublishAddressStream(ctx context.Context, address string, m server.Message, body io.Reader) (server.PublishResult, error)
	Body(ctx context.Context, queue, id, receipt string) (*server.BodyReader, error)

	Receive(ctx context.Context, queue string, p server.ReceiveParams) ([]server.Delivery, error)
	Ack(ctx context.Context, queue string, receipts []string) ([]server.ReceiptResult, error)
	Nack(ctx context.Context, queue string, receipts []string, delay time.Duration) ([]server.ReceiptResult, error)
	Extend(ctx context.Context, queue string, receipts []string, lease time.Duration) ([]server.ReceiptResult, error)
}

var _ Broker = (*server.Server)(nil)

// Config configures the HTTP API. Zero values mean the defaults.
type Config struct {
	// MaxBodyBytes bounds the body of one message (a single publish, or one decoded
	// message of a batch, which LargeMessageThreshold bounds too). Pass the server's
	// MaxMessageSize; 0 means server.MaxMessageSizeDefault.
	MaxBodyBytes int64
	// LargeMessageThreshold is the body size above which a single publish is streamed
	// to the broker (Broker.PublishStream) instead of read whole, and the largest body
	// of a message of a batch publish. Pass the server's
	// LargeMessageThreshold; 0 means server.LargeMessageThresholdDefault.
	LargeMessageThreshold int64
	// MaxRequestBytes bounds a JSON request body; 0 means MaxRequestBytesDefault.
	MaxRequestBytes int64
	// MaxBatchBytes bounds a batch publish body; 0 means MaxBatchBytesDefault.
	MaxBatchBytes int64
	// Logger receives request logs (at debug) and internal errors; nil means
	// slog.Default().
	Logger *slog.Logger
	// Metrics is served at GET /metrics and observes every request; nil means metrics
	// on a registry of this handler's own (see NewMetrics).
	Metrics *Metrics
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = server.MaxMessageSizeDefault
	}
	if c.LargeMessageThreshold <= 0 {
		c.LargeMessageThreshold = server.LargeMessageThresholdDefault
	}
	if c.MaxRequestBytes <= 0 {
		c.MaxRequestBytes = MaxRequestBytesDefault
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = MaxBatchBytesDefault
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Metrics == nil {
		c.Metrics, _ = NewMetrics(prometheus.NewRegistry()) // a fresh registry holds no clash
	}
	return c
}

// api holds what every handler needs.
type api struct {
	b   Broker
	cfg Config
	log *slog.Logger
}

// New returns the HTTP handler of the REST API on b. See the package documentation
// for the routes; openapi.yaml describes them in full.
func New(b Broker, cfg Config) http.Handler {
	cfg = cfg.WithDefaults()
	a := &api{b: b, cfg: cfg, log: cfg.Logger}

	r := chi.NewRouter()
	// GetHead answers HEAD on every GET route (load balancers health-check with HEAD).
	r.Use(requestID, cfg.Metrics.observeRequests, a.logRequests, a.recoverPanics, middleware.GetHead)
	cfg.Metrics.setBroker(b)

	r.Get("/livez", a.livez)
	r.Get("/metrics", cfg.Metrics.handler(a.log).ServeHTTP) // every role, like /livez
	r.Get("/readyz", a.readyz)
	r.Get("/openapi.yaml", serveOpenAPI)

	r.Route("/v1", func(r chi.Router) {
		r.Get("/cluster", a.cluster)
		r.Group(func(r chi.Router) {
			r.Use(a.requireLive)
			r.Mount("/queues", queuesResource{a}.Routes())
			r.Mount("/addresses", addressesResource{a}.Routes())
		})
	})

	// Set last: chi hands these down to every router mounted above.
	r.NotFound(func(w http.ResponseWriter, req *http.Request) {
		a.writeError(w, req, fmt.Errorf("%w: %s %s", errRouteNotFound, req.Method, req.URL.Path))
	})
	routes := walkRoutes(r)
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		for _, m := range allowedMethods(routes, req.URL.Path) {
			w.Header().Add("Allow", m)
		}
		a.writeError(w, req, fmt.Errorf("%w: %s %s", errMethodNotAllowed, req.Method, req.URL.Path))
	})
	return r
}

// route is one method and path pattern served by the router.
type route struct {
	method string
	path   string // chi pattern such as /v1/queues/{queue}/ack
}

// walkRoutes lists every route of r, with the artifacts of mounted routers ("/*"
// joints, a trailing "/" for a sub-router's root) removed.
func walkRoutes(r chi.Routes) []route {
	var out []route
	_ = chi.Walk(r, func(method, pattern string, _ http.Handler, _ ...func(http.Handler) http.Handler) error {
		out = append(out, route{method: method, path: normalizeRoutePath(pattern)})
		return nil
	})
	return out
}

// normalizeRoutePath removes the artifacts of mounted routers from a chi pattern.
func normalizeRoutePath(p string) string {
	p = strings.ReplaceAll(p, "/*", "")
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	return p
}

// allowedMethods lists the methods routed for path, for the Allow header of a 405.
func allowedMethods(routes []route, path string) []string {
	var out []string
	for _, rt := range routes {
		if pathMatches(rt.path, normalizeRoutePath(path)) && !slices.Contains(out, rt.method) {
			out = append(out, rt.method)
		}
	}
	return out
}

// pathMatches reports whether path matches pattern, where a {param} segment matches
// any one non-empty segment.
func pathMatches(pattern, path string) bool {
	ps, xs := strings.Split(pattern, "/"), strings.Split(path, "/")
	if len(ps) != len(xs) {
		return false
	}
	for i := range ps {
		if strings.HasPrefix(ps[i], "{") && strings.HasSuffix(ps[i], "}") {
			if xs[i] == "" {
				return false
			}
			continue
		}
		if ps[i] != xs[i] {
			return false
		}
	}
	return true
}

// requireLive answers 503 not_live (with Retry-After) while this instance is not the
// live broker. It is checked on every request, so a backup that takes over serves at
// once and a live that steps down refuses at once.
func (a *api) requireLive(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if role := a.b.Role(); role != server.RoleLive {
			a.writeError(w, r, notLive(role))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// notLive is the error of a request refused in role.
func notLive(role server.Role) error {
	return &notLiveError{role: role}
}

type notLiveError struct{ role server.Role }

func (e *notLiveError) Error() string {
	return "this instance is not the live broker (role " + string(e.role) + "); retry, or use the live one"
}
func (e *notLiveError) Unwrap() error { return server.ErrNotLive }

// livez answers 200 while the process runs.
func (a *api) livez(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 only while this instance is the live broker.
func (a *api) readyz(w http.ResponseWriter, r *http.Request) {
	role := a.b.Role()
	if role != server.RoleLive {
		a.writeError(w, r, notLive(role))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "role": string(role)})
}

// clusterJSON is the answer of GET /v1/cluster.
type clusterJSON struct {
	NodeName      string      `json:"node_name"`
	Role          server.Role `json:"role"`
	Epoch         int64       `json:"epoch"`
	LiveNode      string      `json:"live_node"`
	LockExpiresAt time.Time   `json:"lock_expires_at"`
	Backups       []string    `json:"backups"`
}

// cluster answers in every role.
func (a *api) cluster(w http.ResponseWriter, _ *http.Request) {
	st := a.b.ClusterStatus()
	out := clusterJSON{
		NodeName:      st.NodeName,
		Role:          st.Role,
		Epoch:         st.Epoch,
		LiveNode:      st.LiveNode,
		LockExpiresAt: st.LockExpiresAt.UTC(),
		Backups:       nonNil(st.Backups),
	}
	writeJSON(w, http.StatusOK, out)
}

// writeJSON writes v as the JSON body with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v) // the client may have gone; nothing left to tell it
}

// nonNil returns s, or an empty slice for nil, so JSON shows [] and never null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

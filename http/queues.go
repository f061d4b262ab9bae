package httpapi

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/tablemq/tablemq/server"
)

// queuesResource serves /v1/queues.
type queuesResource struct{ a *api }

// Routes returns the router of /v1/queues.
func (q queuesResource) Routes() chi.Router {
	r := chi.NewRouter()
	r.Get("/", q.list)
	r.Route("/{queue}", func(r chi.Router) {
		r.Use(q.a.nameParam("queue", "queue"))
		r.Get("/", q.get)
		r.Put("/", q.create)
		r.Delete("/", q.delete)
		r.Post("/purge", q.purge)
		r.Post("/messages", q.publish)
		r.Post("/messages/batch", q.publishBatch)
		r.Get("/messages/{id}/body", q.body) // large.go
		r.Post("/receive", q.receive)
		r.Post("/ack", q.receipts(opAck))
		r.Post("/nack", q.receipts(opNack))
		r.Post("/extend", q.receipts(opExtend))
	})
	return r
}

// nameParam validates the URL parameter param as a name (400 invalid_request when
// not), so handlers below it can use chi.URLParam(r, param) as is.
func (a *api) nameParam(param, what string) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := checkName(what, chi.URLParam(r, param)); err != nil {
				a.writeError(w, r, err)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// queueJSON is the JSON form of a queue.
type queueJSON struct {
	Name             string          `json:"name"`
	Depth            int64           `json:"depth"`
	Paged            int64           `json:"paged"`
	Bytes            int64           `json:"bytes"`
	InFlight         int64           `json:"in_flight"`
	InMemory         int64           `json:"in_memory"`
	Delayed          int64           `json:"delayed"`
	WaitingReceivers int             `json:"waiting_receivers"`
	Config           queueConfigJSON `json:"config"`
	Addresses        []string        `json:"addresses"`
	CreatedAt        time.Time       `json:"created_at"`
}

func encodeQueue(qi server.QueueInfo) queueJSON {
	return queueJSON{
		Name:             qi.Name,
		Depth:            qi.Depth,
		Paged:            qi.Paged,
		Bytes:            qi.Bytes,
		InFlight:         qi.InFlight,
		InMemory:         qi.InMemory,
		Delayed:          qi.Delayed,
		WaitingReceivers: qi.WaitingReceivers,
		Config:           encodeQueueConfig(qi.Config),
		Addresses:        nonNil(qi.Addresses),
		CreatedAt:        qi.CreatedAt.UTC(),
	}
}

// list serves GET /v1/queues.
func (q queuesResource) list(w http.ResponseWriter, r *http.Request) {
	qs, err := q.a.b.QueueList(r.Context())
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	out := struct {
		Queues []queueJSON `json:"queues"`
	}{Queues: make([]queueJSON, 0, len(qs))}
	for _, qi := range qs {
		out.Queues = append(out.Queues, encodeQueue(qi))
	}
	writeJSON(w, http.StatusOK, out)
}

// get serves GET /v1/queues/{queue}.
func (q queuesResource) get(w http.ResponseWriter, r *http.Request) {
	qi, err := q.a.b.QueueGet(r.Context(), chi.URLParam(r, "queue"))
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, encodeQueue(qi))
}

// create serves PUT /v1/queues/{queue}: 201 created, 200 existed with the same
// settings, 409 existed with others.
func (q queuesResource) create(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, q.a.cfg.MaxRequestBytes)
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	cfg, err := decodeQueueConfig(body)
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	name := chi.URLParam(r, "queue")
	created, err := q.a.b.QueueCreate(r.Context(), name, cfg)
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, struct {
		Name    string          `json:"name"`
		Created bool            `json:"created"`
		Config  queueConfigJSON `json:"config"`
	}{name, created, encodeQueueConfig(cfg)})
}

// delete serves DELETE /v1/queues/{queue}.
func (q queuesResource) delete(w http.ResponseWriter, r *http.Request) {
	if err := q.a.b.QueueDelete(r.Context(), chi.URLParam(r, "queue")); err != nil {
		q.a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// purge serves POST /v1/queues/{queue}/purge.
func (q queuesResource) purge(w http.ResponseWriter, r *http.Request) {
	n, err := q.a.b.QueuePurge(r.Context(), chi.URLParam(r, "queue"))
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int64{"purged": n})
}

// publish serves POST /v1/queues/{queue}/messages.
func (q queuesResource) publish(w http.ResponseWriter, r *http.Request) {
	q.a.publishOne(w, r, chi.URLParam(r, "queue"), q.a.b.PublishQueue, q.a.b.PublishStream)
}

// publishBatch serves POST /v1/queues/{queue}/messages/batch.
func (q queuesResource) publishBatch(w http.ResponseWriter, r *http.Request) {
	q.a.publishBatch(w, r, chi.URLParam(r, "queue"), q.a.b.PublishQueue)
}

// receive serves POST /v1/queues/{queue}/receive (long poll up to wait).
func (q queuesResource) receive(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, q.a.cfg.MaxRequestBytes)
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	p, err := decodeReceive(body)
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	ds, err := q.a.b.Receive(r.Context(), chi.URLParam(r, "queue"), p)
	if err != nil {
		q.a.writeError(w, r, err)
		return
	}
	writeReceive(w, ds)
}

// receiptResultJSON is the outcome of one receipt.
type receiptResultJSON struct {
	Receipt string       `json:"receipt"`
	OK      bool         `json:"ok"`
	Error   *ErrorDetail `json:"error,omitempty"`
}

// receipts serves ack, nack and extend: 200 with one result per receipt, in order.
func (q queuesResource) receipts(op receiptOp) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r, q.a.cfg.MaxRequestBytes)
		if err != nil {
			q.a.writeError(w, r, err)
			return
		}
		receipts, d, err := decodeReceipts(body, op)
		if err != nil {
			q.a.writeError(w, r, err)
			return
		}
		queue := chi.URLParam(r, "queue")
		var results []server.ReceiptResult
		switch op {
		case opAck:
			results, err = q.a.b.Ack(r.Context(), queue, receipts)
		case opNack:
			results, err = q.a.b.Nack(r.Context(), queue, receipts, d)
		case opExtend:
			results, err = q.a.b.Extend(r.Context(), queue, receipts, d)
		}
		if err != nil {
			q.a.writeError(w, r, err)
			return
		}
		out := struct {
			Results []receiptResultJSON `json:"results"`
		}{Results: make([]receiptResultJSON, 0, len(results))}
		for _, res := range results {
			rr := receiptResultJSON{Receipt: res.Receipt, OK: res.Err == nil}
			if res.Err != nil {
				e := q.a.errorDetail(r, res.Err)
				rr.Error = &e
			}
			out.Results = append(out.Results, rr)
		}
		writeJSON(w, http.StatusOK, out)
	}
}

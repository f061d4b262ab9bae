package httpapi

import (
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/tablemq/tablemq/server"
)

// addressesResource serves /v1/addresses.
type addressesResource struct{ a *api }

// Routes returns the router of /v1/addresses.
func (ar addressesResource) Routes() chi.Router {
	r := chi.NewRouter()
	r.Get("/", ar.list)
	r.Route("/{address}", func(r chi.Router) {
		r.Use(ar.a.nameParam("address", "address"))
		r.Get("/", ar.get)
		r.Put("/", ar.create)
		r.Delete("/", ar.delete)
		r.Post("/messages", ar.publish)
		r.Post("/messages/batch", ar.publishBatch)
		r.Route("/bindings/{queue}", func(r chi.Router) {
			r.Use(ar.a.nameParam("queue", "queue"))
			r.Put("/", ar.bind)
			r.Delete("/", ar.unbind)
		})
	})
	return r
}

// addressJSON is the JSON form of an address.
type addressJSON struct {
	Name    string             `json:"name"`
	Routing server.RoutingType `json:"routing"`
	limitsJSON
	Queues    []string  `json:"queues"`
	Bytes     int64     `json:"bytes"`
	Paging    bool      `json:"paging"`
	Paged     int64     `json:"paged"`
	CreatedAt time.Time `json:"created_at"`
}

func encodeAddress(ai server.AddressInfo) addressJSON {
	return addressJSON{
		Name:       ai.Name,
		Routing:    ai.Routing,
		limitsJSON: encodeLimits(ai.Limits),
		Queues:     nonNil(ai.Queues),
		Bytes:      ai.Bytes,
		Paging:     ai.Paging,
		Paged:      ai.Paged,
		CreatedAt:  ai.CreatedAt.UTC(),
	}
}

// list serves GET /v1/addresses.
func (ar addressesResource) list(w http.ResponseWriter, r *http.Request) {
	as, err := ar.a.b.AddressList(r.Context())
	if err != nil {
		ar.a.writeError(w, r, err)
		return
	}
	out := struct {
		Addresses []addressJSON `json:"addresses"`
	}{Addresses: make([]addressJSON, 0, len(as))}
	for _, ai := range as {
		out.Addresses = append(out.Addresses, encodeAddress(ai))
	}
	writeJSON(w, http.StatusOK, out)
}

// get serves GET /v1/addresses/{address}.
func (ar addressesResource) get(w http.ResponseWriter, r *http.Request) {
	ai, err := ar.a.b.AddressGet(r.Context(), chi.URLParam(r, "address"))
	if err != nil {
		ar.a.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, encodeAddress(ai))
}

// create serves PUT /v1/addresses/{address}: 201 created, 200 existed with the same
// routing, 409 existed with another.
func (ar addressesResource) create(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r, ar.a.cfg.MaxRequestBytes)
	if err != nil {
		ar.a.writeError(w, r, err)
		return
	}
	cfg, err := decodeAddressConfig(body)
	if err != nil {
		ar.a.writeError(w, r, err)
		return
	}
	name := chi.URLParam(r, "address")
	created, err := ar.a.b.AddressCreate(r.Context(), name, cfg)
	if err != nil {
		ar.a.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, struct {
		Name    string             `json:"name"`
		Created bool               `json:"created"`
		Routing server.RoutingType `json:"routing"`
	}{name, created, cfg.Routing})
}

// delete serves DELETE /v1/addresses/{address}.
func (ar addressesResource) delete(w http.ResponseWriter, r *http.Request) {
	if err := ar.a.b.AddressDelete(r.Context(), chi.URLParam(r, "address")); err != nil {
		ar.a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// bind serves PUT /v1/addresses/{address}/bindings/{queue}: 201 bound, 200 was bound.
func (ar addressesResource) bind(w http.ResponseWriter, r *http.Request) {
	address, queue := chi.URLParam(r, "address"), chi.URLParam(r, "queue")
	created, err := ar.a.b.BindingCreate(r.Context(), address, queue)
	if err != nil {
		ar.a.writeError(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, struct {
		Address string `json:"address"`
		Queue   string `json:"queue"`
		Created bool   `json:"created"`
	}{address, queue, created})
}

// unbind serves DELETE /v1/addresses/{address}/bindings/{queue}.
func (ar addressesResource) unbind(w http.ResponseWriter, r *http.Request) {
	if err := ar.a.b.BindingDelete(r.Context(), chi.URLParam(r, "address"), chi.URLParam(r, "queue")); err != nil {
		ar.a.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// publish serves POST /v1/addresses/{address}/messages.
func (ar addressesResource) publish(w http.ResponseWriter, r *http.Request) {
	ar.a.publishOne(w, r, chi.URLParam(r, "address"), ar.a.b.PublishAddress, ar.a.b.PublishAddressStream)
}

// publishBatch serves POST /v1/addresses/{address}/messages/batch.
func (ar addressesResource) publishBatch(w http.ResponseWriter, r *http.Request) {
	ar.a.publishBatch(w, r, chi.URLParam(r, "address"), ar.a.b.PublishAddress)
}

// Package httpapi owns tablemq's REST API: routing (chi), request decoding and
// validation, the one error catalog, health endpoints and the OpenAPI document. It
// speaks to the broker core only through the Broker interface (implemented by
// *server.Server) and never imports sqlstore or a driver.
//
// # Routes
//
//	GET    /livez                                     200 while the process runs
//	GET    /readyz                                    200 on the live broker, else 503 not_live
//	GET    /metrics                                   Prometheus metrics (answered in every role)
//	GET    /openapi.yaml                              this API as OpenAPI 3.0.3
//	GET    /v1/cluster                                role and lock status (answered in every role)
//	GET    /v1/queues                                 list queues
//	PUT    /v1/queues/{queue}                         create (201), exists same (200), differs (409)
//	GET    /v1/queues/{queue}                         queue info and counters
//	DELETE /v1/queues/{queue}                         204
//	POST   /v1/queues/{queue}/purge                   200 {"purged": n}
//	POST   /v1/queues/{queue}/messages                publish the raw body, 201 {"id"}
//	POST   /v1/queues/{queue}/messages/batch          publish up to 1000, 200 per-message results
//	GET    /v1/queues/{queue}/messages/{id}/body      the raw body of a delivery (?receipt=...), streamed
//	POST   /v1/queues/{queue}/receive                 lease up to max messages, long poll up to wait
//	POST   /v1/queues/{queue}/ack                     per-receipt results
//	POST   /v1/queues/{queue}/nack                    per-receipt results
//	POST   /v1/queues/{queue}/extend                  per-receipt results
//	GET    /v1/addresses                              list addresses
//	PUT    /v1/addresses/{address}                    create (201/200/409)
//	GET    /v1/addresses/{address}                    address info
//	DELETE /v1/addresses/{address}                    204
//	POST   /v1/addresses/{address}/messages           publish, routed to the bound queues
//	POST   /v1/addresses/{address}/messages/batch     batch publish, routed
//	PUT    /v1/addresses/{address}/bindings/{queue}   bind (201) or already bound (200)
//	DELETE /v1/addresses/{address}/bindings/{queue}   unbind, 204
//
// # Choices
//
//   - Not live: every /v1/ route except /v1/cluster answers 503, code not_live, with
//     Retry-After: 1 while Broker.Role() is not live; the role is read per request.
//     server.ErrNotLive from a call in progress is answered the same way.
//   - Errors: every error answer is {"error": {"code", "message"}}; the catalog in
//     errors.go maps each sentinel to a status and a stable code. Unknown routes are 404
//     not_found, wrong methods 405 method_not_allowed (with Allow). Errors outside the
//     catalog are 500 internal with a generic message; the detail is logged with the
//     request id (X-Request-Id, echoed on every answer).
//   - Single publish: the body is the message as is; Content-Type is kept (default
//     application/octet-stream). Headers: Idempotency-Key, Tmq-Priority (0-9),
//     Tmq-Delay (0..7d), Tmq-TTL (0..365d), Tmq-Persistent (true|false, default true)
//     and Tmq-Header-<Name>: value for message headers (names lowercased; repeated
//     headers joined with ", "). The answer is 201 {"id", "duplicate": false}; a
//     duplicate (idempotency key seen within the window) is also 201, with the first
//     message's id, "duplicate": true and the header Tmq-Duplicate: true, so a retry
//     looks like the first success.
//   - Large messages (large.go): a single publish reads at most
//     Config.LargeMessageThreshold+1 bytes of its body; a longer body is streamed on to
//     Broker.PublishStream, which stores it in chunks, never whole in memory. A
//     Content-Length above Config.MaxBodyBytes is 413 before anything is read; a
//     chunked body past it is 413 as soon as it passes. A receive answer gives every
//     message's "size" and "large"; a large message has "data": "" and its body is read
//     from GET .../messages/{id}/body?receipt=..., which streams it with its
//     Content-Type and Content-Length. The receipt follows the rules of ack; a bad one
//     is 400 with the code of the ack results (receipt_unknown, receipt_stale,
//     receipt_invalid). A body answer cut short of its Content-Length (the live died)
//     can be fetched again, from the new live, with the same receipt.
//   - Batch publish: each message is decoded and validated on its own; a bad one gets
//     a per-message error, the others are published. Only an unusable body as a whole
//     (not JSON, no messages: 400; more than 1000 messages or too many bytes: 413) fails
//     the request. When every
//     message is invalid the broker is not called, so an unknown queue is not reported.
//     A message of a batch holds at most Config.LargeMessageThreshold bytes (and
//     Config.MaxBodyBytes): it is stored whole in the messages table, so a larger body
//     gets a per-message 413 too_large and is to be published alone, streamed.
//   - Receipts (ack, nack, extend): 1..1000 receipts (more: 413 too_large); each gets {"receipt", "ok"} and
//     on failure an error with code receipt_unknown, receipt_stale or receipt_invalid.
//     Extend requires lease; nack's delay is optional (0 = deliverable at once).
//   - Input: JSON bodies are decoded strictly (unknown fields, wrong types, trailing
//     data are 400 naming the field); bodies over their limit are 413 too_large.
//     Optional bodies (PUT queue, receive) may be empty. Content-Type of JSON requests
//     is not checked, so plain curl -d works. Durations are Go duration strings
//     ("1.5s"); ranges: receive wait 0..30s, lease 100ms..12h (0 = queue default),
//     nack delay 0..24h, publish delay 0..7d, ttl 0..365d. Names match
//     ^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$ (server.ValidName).
//   - Output: lists are always arrays (never null), times are RFC 3339 in UTC,
//     message data is standard base64, queue config durations are strings and unset
//     settings are left out.
//   - Metrics: GET /metrics serves Config.Metrics (NewMetrics, on a dedicated
//     prometheus.Registry, never the global one) in every role, outside the not-live
//     gate. Every request is timed by method, chi route pattern (never the raw path)
//     and status class. The broker's totals (server.Counters), role, epoch and queue
//     depths are read from the broker at scrape time, so nothing is counted twice;
//     per-queue series are left out above MaxQueueSeries queues. The store writer's
//     commits and the node manager's lock renewals reach the metrics through the
//     callbacks ObserveCommit and ObserveRenew, wired by cmd. pprof is not served
//     here: tablemq serve --pprof-listen serves it on a listener of its own.
//   - A receive may wait up to 30s: the http.Server's WriteTimeout must be longer.
package httpapi

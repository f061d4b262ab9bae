package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
)

// HTTP helpers of the scenarios beyond the spine's (broker.go).

// put sends PUT path with an optional JSON body and accepts 200 or 201.
func (b *broker) put(ctx context.Context, path string, body []byte) error {
	ctype := ""
	if body != nil {
		ctype = "application/json"
	}
	return b.h1.do(ctx, http.MethodPut, path, ctype, nil, body, func(status int, resp []byte) error {
		if status != http.StatusOK && status != http.StatusCreated {
			return statusError(http.MethodPut, path, status, resp)
		}
		return nil
	})
}

// depth returns the number of ready messages of q.
func (b *broker) depth(ctx context.Context, q string) (int64, error) {
	d, _, err := b.counts(ctx, q)
	return d, err
}

// counts returns the numbers of ready and of leased messages of q.
func (b *broker) counts(ctx context.Context, q string) (depth, inFlight int64, err error) {
	var res struct {
		Depth    int64 `json:"depth"`
		InFlight int64 `json:"in_flight"`
	}
	if err := b.do(ctx, http.MethodGet, "/v1/queues/"+q, "", nil, http.StatusOK, &res); err != nil {
		return 0, 0, err
	}
	return res.Depth, res.InFlight, nil
}

// publishTo publishes one message to path (".../messages") with extra headers (names
// and values in pairs).
func (b *broker) publishTo(ctx context.Context, path string, body []byte, hdr []string) error {
	return b.h1.do(ctx, http.MethodPost, path, "application/octet-stream", hdr, body, func(status int, resp []byte) error {
		if status != http.StatusCreated {
			return statusError(http.MethodPost, path, status, resp)
		}
		return nil
	})
}

// batchBody is the JSON request of a batch publish of n copies of body; it is built
// once per scenario so that the load generator spends its CPU on requests, not JSON.
func batchBody(body []byte, n int) []byte {
	enc := base64.StdEncoding.EncodeToString(body)
	var sb strings.Builder
	sb.WriteString(`{"messages":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			sb.WriteByte(',')
		}
		sb.WriteString(`{"data":"`)
		sb.WriteString(enc)
		sb.WriteString(`"}`)
	}
	sb.WriteString(`]}`)
	return []byte(sb.String())
}

// postBatch sends a prepared batch publish (see batchBody) to path
// (".../messages/batch") and checks that every message was accepted.
func (b *broker) postBatch(ctx context.Context, path string, req []byte, n int) error {
	var res struct {
		Results []struct {
			ID    string          `json:"id"`
			Error json.RawMessage `json:"error"`
		} `json:"results"`
	}
	if err := b.do(ctx, http.MethodPost, path, "application/json", req, http.StatusOK, &res); err != nil {
		return err
	}
	if len(res.Results) != n {
		return fmt.Errorf("batch publish: %d results for %d messages", len(res.Results), n)
	}
	for _, r := range res.Results {
		if len(r.Error) > 0 && string(r.Error) != "null" {
			return fmt.Errorf("batch publish: %s", r.Error)
		}
	}
	return nil
}

// delivery is the part of a received message the benchmark looks at.
type delivery struct {
	ID      string            `json:"id"`
	Receipt string            `json:"receipt"`
	Headers map[string]string `json:"headers"`
	Large   bool              `json:"large"` // the body is fetched from the body endpoint
	Size    int64             `json:"size"`  // of a large body
}

// recv receives up to max messages of q, waiting up to wait (a duration string).
func (b *broker) recv(ctx context.Context, q string, max int, wait string) ([]delivery, error) {
	req, _ := json.Marshal(map[string]any{"max": max, "wait": wait, "lease": "30s"})
	var res struct {
		Messages []delivery `json:"messages"`
	}
	if err := b.do(ctx, http.MethodPost, "/v1/queues/"+q+"/receive", "application/json", req, http.StatusOK, &res); err != nil {
		return nil, err
	}
	return res.Messages, nil
}

// ack acks the deliveries ds of q; a receipt refused is an error.
func (b *broker) ack(ctx context.Context, q string, ds []delivery) error {
	return b.settle(ctx, q, "ack", ds)
}

// settle acks or nacks (op) the deliveries ds of q; a receipt refused is an error.
func (b *broker) settle(ctx context.Context, q, op string, ds []delivery) error {
	receipts := make([]string, len(ds))
	for i, d := range ds {
		receipts[i] = d.Receipt
	}
	req, _ := json.Marshal(map[string]any{"receipts": receipts})
	var res struct {
		Results []struct {
			OK bool `json:"ok"`
		} `json:"results"`
	}
	if err := b.do(ctx, http.MethodPost, "/v1/queues/"+q+"/"+op, "application/json", req, http.StatusOK, &res); err != nil {
		return err
	}
	bad := 0
	for _, r := range res.Results {
		if !r.OK {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%s: %d of %d receipts refused", op, bad, len(ds))
	}
	return nil
}

// nack returns the deliveries ds of q to the queue at once; a receipt refused is an error.
func (b *broker) nack(ctx context.Context, q string, ds []delivery) error {
	return b.settle(ctx, q, "nack", ds)
}

// recvAck receives up to max messages and acks them; an empty answer is errExhausted.
func (b *broker) recvAck(ctx context.Context, q string, max int, wait string) (int, error) {
	ds, err := b.recv(ctx, q, max, wait)
	if err != nil {
		return 0, err
	}
	if len(ds) == 0 {
		return 0, errExhausted
	}
	if err := b.ack(ctx, q, ds); err != nil {
		return 0, err
	}
	return len(ds), nil
}

// ensureQueue creates q, or accepts that it exists (200).
func (b *broker) ensureQueue(ctx context.Context, q string) error {
	return b.put(ctx, "/v1/queues/"+q, nil)
}

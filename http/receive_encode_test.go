package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/tablemq/tablemq/server"
)

// legacyDelivery is a delivery as the receive response rendered it before
// deliveriesJSON: base64 text and time.Time fields. The JSON must not change.
type legacyDelivery struct {
	ID             string            `json:"id"`
	Receipt        string            `json:"receipt"`
	Data           string            `json:"data"`
	ContentType    string            `json:"content_type"`
	DeliveryCount  int               `json:"delivery_count"`
	Redelivered    bool              `json:"redelivered"`
	Headers        map[string]string `json:"headers"`
	Priority       int               `json:"priority"`
	PublishedAt    time.Time         `json:"published_at"`
	LeaseExpiresAt time.Time         `json:"lease_expires_at"`
	Large          bool              `json:"large"`
	Size           int64             `json:"size"`
}

func sampleDeliveries(n, size int) []server.Delivery {
	ds := make([]server.Delivery, n)
	at := time.Date(2026, 11, 22, 6, 1, 2, 345678900, time.FixedZone("x", 3600))
	for i := range ds {
		ds[i] = server.Delivery{
			ID: fmt.Sprint(1000 + i), Receipt: fmt.Sprintf("r%d.abc", i), Body: bytes.Repeat([]byte{byte(i), '<', 0xff}, size/3),
			ContentType: "application/octet-stream", DeliveryCount: i % 3, Redelivered: i%3 > 0, Priority: i % 10,
			PublishedAt: at.Add(time.Duration(i) * time.Millisecond), LeaseExpires: at.Add(30 * time.Second), Size: int64(size),
		}
	}
	ds[0].Headers = map[string]string{"trace-id": "a<b>&c", "x": ""}
	ds[1].Body, ds[1].Large, ds[1].Size = nil, true, 1<<20
	ds[2].PublishedAt = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) // whole seconds: no fraction
	return ds
}

// TestDeliveriesJSON checks that the receive response is byte for byte the JSON of the
// former rendering (time.Time fields, base64 strings), large messages and headers
// included.
func TestDeliveriesJSON(t *testing.T) {
	ds := sampleDeliveries(5, 30)
	want, err := json.Marshal(legacyDeliveries(ds))
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(receiveResponse{Messages: deliveriesJSON(ds)})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(want, got) {
		t.Fatalf("receive JSON changed:\n got %s\nwant %s", got, want)
	}
	if !bytes.Contains(got, []byte(`"data":"","content_type"`)) {
		t.Fatalf("a large message must have data \"\": %s", got)
	}
}

// legacyDeliveries renders ds as the former code did.
func legacyDeliveries(ds []server.Delivery) any {
	legacy := make([]legacyDelivery, len(ds))
	for i, d := range ds {
		h := d.Headers
		if h == nil {
			h = map[string]string{}
		}
		legacy[i] = legacyDelivery{ID: d.ID, Receipt: d.Receipt, Data: base64.StdEncoding.EncodeToString(d.Body),
			ContentType: d.ContentType, DeliveryCount: d.DeliveryCount, Redelivered: d.Redelivered, Headers: h,
			Priority: d.Priority, PublishedAt: d.PublishedAt.UTC(), LeaseExpiresAt: d.LeaseExpires.UTC(), Large: d.Large, Size: d.Size}
	}
	return struct {
		Messages []legacyDelivery `json:"messages"`
	}{legacy}
}

// BenchmarkReceiveResponse renders and encodes a receive answer of 100 messages of
// 1 KiB as writeJSON does, against the former rendering.
func BenchmarkReceiveResponse(b *testing.B) {
	ds := sampleDeliveries(100, 1024)
	for _, bc := range []struct {
		name   string
		render func([]server.Delivery) any
	}{
		{"deliveriesJSON", func(ds []server.Delivery) any { return receiveResponse{Messages: deliveriesJSON(ds)} }},
		{"former", legacyDeliveries},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var buf bytes.Buffer
			b.ReportAllocs()
			for b.Loop() {
				buf.Reset()
				if err := json.NewEncoder(&buf).Encode(bc.render(ds)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("appendReceiveJSON", func(b *testing.B) {
		var buf []byte
		b.ReportAllocs()
		for b.Loop() {
			buf = appendReceiveJSON(buf[:0], ds)
		}
	})
}

// encodeReceive is what writeJSON wrote for a receive before appendReceiveJSON.
func encodeReceive(t testing.TB, ds []server.Delivery) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(receiveResponse{Messages: deliveriesJSON(ds)}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestReceiveJSON checks that the hand-written receive answer is byte for byte what
// encoding/json writes, for strings that need escaping, headers, defaults and none.
func TestReceiveJSON(t *testing.T) {
	at := time.Date(2026, 11, 22, 6, 1, 2, 0, time.UTC)
	odd := []string{"", "plain", `q"uote`, `back\slash`, "<b>&amp;", "a<b", "a>b", "a&b", "tab\tnew\nline\x01", "é ü 日本", "\u2028\u2029",
		"bad\xffutf8", "\x7f del", "emoji 🙂"}
	cases := map[string][]server.Delivery{
		"none":     {},
		"sample":   sampleDeliveries(5, 30),
		"defaults": {{ID: "1", Receipt: "r", PublishedAt: at, LeaseExpires: at}}, // no content type, no headers, no body
	}
	var strs []server.Delivery
	for i, s := range odd {
		strs = append(strs, server.Delivery{ID: s, Receipt: s, ContentType: s, Body: []byte(s),
			Headers: map[string]string{s: s, "k" + strconv.Itoa(i): s, "Z": "last?"}, DeliveryCount: -i, Priority: 9 - i,
			PublishedAt: at.Add(time.Duration(i) * time.Nanosecond), LeaseExpires: time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), Size: int64(-i)})
	}
	cases["strings"] = strs
	for name, ds := range cases {
		t.Run(name, func(t *testing.T) {
			want := encodeReceive(t, ds)
			if got := appendReceiveJSON(nil, ds); !bytes.Equal(got, want) {
				t.Fatalf("receive JSON differs:\n got %s\nwant %s", got, want)
			}
		})
	}
}

// FuzzReceiveJSON compares the hand-written receive answer with encoding/json's.
func FuzzReceiveJSON(f *testing.F) {
	f.Add("1", "r.1", "text/plain", "k", "v", []byte("body"), 1, 4, false, int64(4), int64(1795333068735000000))
	f.Add("<&>", "\u2028", "", "\xff", "\"", []byte{0, 1, 2}, -1, 0, true, int64(-1), int64(-62135596800000000))
	f.Fuzz(func(t *testing.T, id, receipt, ct, hk, hv string, body []byte, count, prio int, large bool, size, ns int64) {
		at := time.Unix(0, ns)
		ds := []server.Delivery{
			{ID: id, Receipt: receipt, ContentType: ct, Body: body, Headers: map[string]string{hk: hv, hv: hk},
				DeliveryCount: count, Redelivered: count > 1, Priority: prio, PublishedAt: at, LeaseExpires: at.Add(time.Second),
				Large: large, Size: size},
			{ID: hv, Receipt: hk, PublishedAt: at, LeaseExpires: at},
		}
		want := encodeReceive(t, ds)
		if got := appendReceiveJSON(nil, ds); !bytes.Equal(got, want) {
			t.Fatalf("receive JSON differs:\n got %q\nwant %q", got, want)
		}
	})
}

// deliveryJSON is one received message, as encoding/json renders it.
type deliveryJSON struct {
	ID             string            `json:"id"`
	Receipt        string            `json:"receipt"`
	Data           []byte            `json:"data"` // base64 (standard, padded)
	ContentType    string            `json:"content_type"`
	DeliveryCount  int               `json:"delivery_count"`
	Redelivered    bool              `json:"redelivered"`
	Headers        map[string]string `json:"headers"`
	Priority       int               `json:"priority"`
	PublishedAt    string            `json:"published_at"`     // RFC 3339, UTC
	LeaseExpiresAt string            `json:"lease_expires_at"` // RFC 3339, UTC
	// Large marks a message whose body is not inlined (Data is empty): read it from
	// GET .../messages/{id}/body. Size is the body size in bytes.
	Large bool  `json:"large"`
	Size  int64 `json:"size"`
}

// receiveResponse is the answer of a receive.
type receiveResponse struct {
	Messages []deliveryJSON `json:"messages"`
}

// deliveriesJSON renders deliveries for encoding/json: the reference the hand-written
// receive answer (appendReceiveJSON) is checked against, and the rendering it replaced.
func deliveriesJSON(ds []server.Delivery) []deliveryJSON {
	out := make([]deliveryJSON, 0, len(ds))
	for _, d := range ds {
		h := d.Headers
		if h == nil {
			h = map[string]string{}
		}
		ct := d.ContentType
		if ct == "" {
			ct = defaultContentType
		}
		body := d.Body
		if body == nil {
			body = []byte{} // "" rather than null (large messages)
		}
		out = append(out, deliveryJSON{
			ID:             d.ID,
			Receipt:        d.Receipt,
			Data:           body,
			ContentType:    ct,
			DeliveryCount:  d.DeliveryCount,
			Redelivered:    d.Redelivered,
			Headers:        h,
			Priority:       d.Priority,
			PublishedAt:    d.PublishedAt.UTC().Format(time.RFC3339Nano),
			LeaseExpiresAt: d.LeaseExpires.UTC().Format(time.RFC3339Nano),
			Large:          d.Large,
			Size:           d.Size,
		})
	}
	return out
}

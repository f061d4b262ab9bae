package httpapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
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
}

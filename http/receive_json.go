package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tablemq/tablemq/server"
)

// The receive answer is the broker's biggest JSON: up to 1000 messages with their
// bodies in base64. It is written by hand, field by field, into one buffer: the same
// bytes encoding/json writes for receiveResponse (TestReceiveJSON and
// FuzzReceiveJSON compare the two), without reflection, a map encoder per message,
// or a second copy of the answer, and with a Content-Length instead of chunks.

// writeReceive answers a receive with ds.
func writeReceive(w http.ResponseWriter, ds []server.Delivery) {
	size := 16
	for i := range ds {
		size += 256 + base64.StdEncoding.EncodedLen(len(ds[i].Body)) + len(ds[i].Receipt) + len(ds[i].ContentType)
		for k, v := range ds[i].Headers {
			size += len(k) + len(v) + 8
		}
	}
	bp := receiveBufs.Get().(*[]byte)
	buf := *bp
	if cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	buf = appendReceiveJSON(buf[:0], ds)
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Length", strconv.Itoa(len(buf)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(buf) // the client may have gone; nothing left to tell it
	if cap(buf) <= receiveBufMax {
		*bp = buf
		receiveBufs.Put(bp)
	}
}

// receiveBufs holds the buffers of receive answers for reuse (an answer of 100
// messages of 1 KiB is about 150 KB); bigger ones than receiveBufMax are dropped.
var receiveBufs = sync.Pool{New: func() any { return new([]byte) }}

const receiveBufMax = 4 << 20

// appendReceiveJSON appends the JSON of receiveResponse{Messages: ds} as
// json.Encoder writes it (HTML-safe escaping, sorted header names, a final newline).
func appendReceiveJSON(b []byte, ds []server.Delivery) []byte {
	b = append(b, `{"messages":[`...)
	for i := range ds {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendDelivery(b, &ds[i])
	}
	return append(b, "]}\n"...)
}

func appendDelivery(b []byte, d *server.Delivery) []byte {
	ct := d.ContentType
	if ct == "" {
		ct = defaultContentType
	}
	b = append(b, `{"id":`...)
	b = appendJSONString(b, d.ID)
	b = append(b, `,"receipt":`...)
	b = appendJSONString(b, d.Receipt)
	b = append(b, `,"data":"`...)
	b = base64.StdEncoding.AppendEncode(b, d.Body)
	b = append(b, `","content_type":`...)
	b = appendJSONString(b, ct)
	b = append(b, `,"delivery_count":`...)
	b = strconv.AppendInt(b, int64(d.DeliveryCount), 10)
	b = append(b, `,"redelivered":`...)
	b = strconv.AppendBool(b, d.Redelivered)
	b = append(b, `,"headers":{`...)
	if len(d.Headers) > 0 {
		keys := make([]string, 0, len(d.Headers))
		for k := range d.Headers {
			keys = append(keys, k)
		}
		slices.Sort(keys) // encoding/json sorts map keys by their bytes
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, d.Headers[k])
		}
	}
	b = append(b, `},"priority":`...)
	b = strconv.AppendInt(b, int64(d.Priority), 10)
	b = append(b, `,"published_at":"`...)
	b = d.PublishedAt.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","lease_expires_at":"`...)
	b = d.LeaseExpires.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","large":`...)
	b = strconv.AppendBool(b, d.Large)
	b = append(b, `,"size":`...)
	b = strconv.AppendInt(b, d.Size, 10)
	return append(b, '}')
}

// appendJSONString appends s as a JSON string the way encoding/json does. Plain
// printable ASCII (ids, receipts, content types, most headers) is copied as it is;
// anything else (quotes, backslashes, control characters, the HTML-sensitive <, > and
// &, non-ASCII and invalid UTF-8) goes through encoding/json itself.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

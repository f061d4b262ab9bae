package httpapi

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// requireSameEntries fails unless two decodings of a batch agree message by message:
// the same message, or errors with the same text.
func requireSameEntries(t testing.TB, want, got []batchEntry) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%d entries, want %d", len(got), len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		if (w.Err == nil) != (g.Err == nil) || (w.Err != nil && w.Err.Error() != g.Err.Error()) {
			t.Fatalf("entry %d: error %v, want %v", i, g.Err, w.Err)
		}
		if w.Err == nil && !reflect.DeepEqual(w.Msg, g.Msg) {
			t.Fatalf("entry %d: message %+v, want %+v", i, g.Msg, w.Msg)
		}
	}
}

// TestDecodeBatchPasses checks that the one-pass decoder takes the usual batches, and
// that whatever it takes decodes exactly as the message-by-message pass does (same
// messages, same per-message errors); what it refuses goes to that pass.
func TestDecodeBatchPasses(t *testing.T) {
	const maxBody = 64
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	for _, tc := range []struct {
		body string
		fast bool // the one-pass decoder takes it
	}{
		{`{"messages":[{"data":"aGk="}]}`, true},
		{`{"messages":[{"data":""}]}`, true},
		{`{"messages":[{"data":"aGk=","content_type":"text/plain","headers":{"A":"b","c":"d"},"idempotency_key":"k",` +
			`"priority":9,"delay":"1s","ttl":"1h","persistent":false}]}`, true},
		{`{"messages":[{"data":"aGk=","priority":10}]}`, true},                                   // per-message error, shared check
		{`{"messages":[{"data":"aGk=","headers":{"a":"1","A":"2"}}]}`, true},                     // per-message error
		{`{"messages":[{"data":"aGk=","delay":"soon"},{"data":"aGk="}]}`, true},                  // one bad, one good
		{`{"messages":[{"data":"aGk=","content_type":"no slash"}]}`, true},                       // per-message error
		{fmt.Sprintf(`{"messages":[{"data":"%s"}]}`, b64(strings.Repeat("x", maxBody+1))), true}, // too large
		{`{"messages":[{"data":"aGk=","persistent":null,"headers":null}]}`, true},
		{`{"messages":[{"data":"aGk"}]}`, false},               // unpadded: the slow pass names the error
		{`{"messages":[{"data":"aG\nk="}]}`, false},            // line break in base64: v1 tolerates it
		{`{"messages":[{"data":"!!"}]}`, false},                // not base64
		{`{"messages":[{"data":"aGk=","Priority":1}]}`, false}, // v1 matches names case-insensitively
		{`{"Messages":[{"data":"aGk="}]}`, false},
		{`{"messages":[{"data":"aGk=","priority":1.0}]}`, false},
		{`{"messages":[{"data":"aGk=","headers":{"a":"b","a":"c"}}]}`, false}, // duplicate names: v1 keeps the last
		{`{"messages":[{"data":"aGk=","content_type":"\ud800"}]}`, false},
		{`{"messages":[null]}`, false},
		{`{"messages":[{}]}`, false},
		{`{"messages":[{"data":null}]}`, false},
		{`{"messages":[1,"x",[]]}`, false},
		{`{"messages":[]}`, false},
		{`{"messages":null}`, false},
		{`{"messages":[{"data":"aGk="}]} x`, false},
		{`{"messages":[{"data":"aGk="}],"x":1}`, false},
		{"{\"messages\":[{\"data\":\"aGk=\",\"content_type\":\"text/\xff\"}]}", false},
		{``, false},
	} {
		fast, ok := decodeBatchFast([]byte(tc.body), maxBody)
		if ok != tc.fast {
			t.Errorf("%s: one pass took it: %v, want %v", tc.body, ok, tc.fast)
			continue
		}
		slow, err := decodeBatchSlow([]byte(tc.body), maxBody)
		if ok {
			if err != nil {
				t.Errorf("%s: taken by the one pass, refused by the slow pass: %v", tc.body, err)
				continue
			}
			requireSameEntries(t, slow, fast)
		}
		all, allErr := decodeBatch([]byte(tc.body), maxBody)
		if (err == nil) != (allErr == nil) {
			t.Errorf("%s: decodeBatch error %v, slow pass %v", tc.body, allErr, err)
			continue
		}
		if err == nil {
			requireSameEntries(t, slow, all)
		}
	}
}

// BenchmarkDecodeBatch decodes a batch of 100 messages of 1 KiB: the one-pass decoder
// against the message-by-message pass it replaces for well-formed batches.
func BenchmarkDecodeBatch(b *testing.B) {
	var sb bytes.Buffer
	sb.WriteString(`{"messages":[`)
	d := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte("x"), 1024))
	for i := range 100 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"data":%q,"priority":4}`, d)
	}
	sb.WriteString(`]}`)
	data := sb.Bytes()
	for _, bc := range []struct {
		name string
		fn   func([]byte, int64) ([]batchEntry, error)
	}{{"one-pass", decodeBatch}, {"per-message", decodeBatchSlow}} {
		b.Run(bc.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.fn(data, 1<<20); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

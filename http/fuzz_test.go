package httpapi

import (
	"regexp"
	"strings"
	"testing"

	"github.com/tablemq/tablemq/server"
)

func FuzzDecodeReceive(f *testing.F) {
	for _, s := range []string{
		``, `{}`, `{"max":1}`, `{"max":1000,"wait":"30s","lease":"12h"}`, `{"max":0}`, `{"max":-1}`,
		`{"max":1e3}`, `{"wait":"1.5s"}`, `{"wait":"-1ns"}`, `{"lease":"0s"}`, `{"lease":"99ms"}`,
		`{"max":"1"}`, `{"x":1}`, `[]`, `null`, `{"max":1}{}`, `{"max":9223372036854775808}`,
		`{"wait":"9999999999999999999h"}`, "\xff", `{"wait":null,"max":null}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := decodeReceive(data)
		if err != nil {
			if p != (server.ReceiveParams{}) {
				t.Fatalf("error %v with non-zero params %+v", err, p)
			}
			return
		}
		if p.Max < 1 || p.Max > server.ReceiveMaxLimit {
			t.Fatalf("max %d out of range", p.Max)
		}
		if p.Wait < 0 || p.Wait > server.ReceiveWaitLimit {
			t.Fatalf("wait %v out of range", p.Wait)
		}
		if p.Lease != 0 && (p.Lease < server.LeaseMin || p.Lease > server.LeaseMax) {
			t.Fatalf("lease %v out of range", p.Lease)
		}
	})
}

func FuzzDecodeBatch(f *testing.F) {
	for _, s := range []string{
		`{"messages":[{"data":"aGk="}]}`,
		`{"messages":[{"data":"aGk=","content_type":"text/plain","headers":{"A":"b"},"idempotency_key":"k",` +
			`"priority":9,"delay":"1s","ttl":"1h","persistent":false}]}`,
		`{"messages":[]}`, `{"messages":null}`, `{"messages":[null]}`, `{"messages":[1,"x",[]]}`,
		`{"messages":[{"data":"!!"}]}`, `{"messages":[{"data":"aGk=","priority":10}]}`,
		`{"messages":[{"data":"aGk=","headers":{"a":"1","A":"2"}}]}`, `{"messages":[{}]}`,
		`{"messages":[{"data":"aGk="}]} x`, `{"msgs":[]}`, ``, `[]`,
	} {
		f.Add([]byte(s))
	}
	const maxBody = 64
	f.Fuzz(func(t *testing.T, data []byte) {
		if fast, ok := decodeBatchFast(data, maxBody); ok {
			slow, err := decodeBatchSlow(data, maxBody)
			if err != nil {
				t.Fatalf("the fast pass accepted a body the slow pass refuses: %v", err)
			}
			requireSameEntries(t, slow, fast)
		}
		entries, err := decodeBatch(data, maxBody)
		if err != nil {
			if entries != nil {
				t.Fatalf("error %v with entries", err)
			}
			return
		}
		if len(entries) < 1 || len(entries) > server.BatchPublishLimit {
			t.Fatalf("%d entries", len(entries))
		}
		for i, e := range entries {
			if e.Err != nil {
				if _, d, internal := classify(e.Err); internal || d.Message == "" {
					t.Fatalf("entry %d: error %v is not a catalogued error", i, e.Err)
				}
				continue
			}
			m := e.Msg
			if int64(len(m.Body)) > maxBody {
				t.Fatalf("entry %d: body of %d bytes", i, len(m.Body))
			}
			if m.ContentType == "" {
				t.Fatalf("entry %d: no content type", i)
			}
			if m.Priority != nil && (*m.Priority < 0 || *m.Priority > server.PriorityMax) {
				t.Fatalf("entry %d: priority %d", i, *m.Priority)
			}
			if m.Delay < 0 || m.Delay > server.PublishDelayMax || m.TTL < 0 || m.TTL > server.TTLMax {
				t.Fatalf("entry %d: delay %v ttl %v", i, m.Delay, m.TTL)
			}
			if len(m.IdempotencyKey) > server.IdempotencyKeyMaxLen || len(m.Headers) > server.HeaderCountMax {
				t.Fatalf("entry %d: key or headers out of bounds", i)
			}
			for k := range m.Headers {
				if k != strings.ToLower(k) {
					t.Fatalf("entry %d: header %q not lowercased", i, k)
				}
			}
		}
	})
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$`)

func FuzzName(f *testing.F) {
	for _, s := range []string{
		"", "a", "A", "0", "orders", "orders.eu-west_1", ".a", "-a", "_a", "a b", "a/b", "a%2Fb",
		strings.Repeat("a", 200), strings.Repeat("a", 201), "é", "a\x00", "a\n", "..", "a..",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := validName(s)
		if want := nameRE.MatchString(s); got != want {
			t.Fatalf("validName(%q) = %v, the rule says %v", s, got, want)
		}
		if got && (len(s) > server.NameMaxLen || strings.ContainsAny(s, "/%?#* \t\n")) {
			t.Fatalf("validName(%q) accepted an unsafe name", s)
		}
		if err := checkName("queue", s); (err == nil) != got {
			t.Fatalf("checkName and validName disagree on %q", s)
		}
	})
}

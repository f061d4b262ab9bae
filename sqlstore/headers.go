package sqlstore

import (
	"encoding/json"
	"fmt"
)

// EncodeHeaders turns message headers into the text stored in the headers column: ""
// for none, a JSON object otherwise. Drivers use it so every dialect stores the same.
func EncodeHeaders(h map[string]string) string {
	if len(h) == 0 {
		return ""
	}
	b, err := json.Marshal(h)
	if err != nil { // a map[string]string always marshals
		panic(fmt.Sprintf("sqlstore: encode headers: %v", err))
	}
	return string(b)
}

// DecodeHeaders is the inverse of EncodeHeaders.
func DecodeHeaders(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	var h map[string]string
	if err := json.Unmarshal([]byte(s), &h); err != nil {
		return nil, fmt.Errorf("sqlstore: decode headers: %w", err)
	}
	return h, nil
}

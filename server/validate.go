package server

import (
	"fmt"
	"regexp"
	"unicode/utf8"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$`)

// ValidName checks a queue or address name: 1 to NameMaxLen characters, letters,
// digits, '.', '_' and '-', starting with a letter or digit. The error wraps
// ErrInvalid.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return invalidf("name %q: must be 1 to %d characters of A-Z a-z 0-9 . _ -, starting with a letter or digit", name, NameMaxLen)
	}
	return nil
}

// validate checks the settings of queue name.
func (c QueueConfig) validate(name string) error {
	if c.MaxDeliveries < 0 || c.MaxDeliveries > MaxDeliveriesLimit {
		return invalidf("max_deliveries %d out of range 0..%d", c.MaxDeliveries, MaxDeliveriesLimit)
	}
	if c.DeadLetterQueue != "" {
		if err := ValidName(c.DeadLetterQueue); err != nil {
			return fmt.Errorf("dead_letter_queue: %w", err)
		}
		if c.DeadLetterQueue == name {
			return invalidf("dead_letter_queue: a queue cannot be its own dead-letter queue")
		}
	}
	if c.Lease != 0 && (c.Lease < LeaseMin || c.Lease > LeaseMax) {
		return invalidf("lease %s out of range %s..%s", c.Lease, LeaseMin, LeaseMax)
	}
	if c.TTL < 0 || c.TTL > TTLMax {
		return invalidf("ttl %s out of range 0..%s", c.TTL, TTLMax)
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	return nil
}

func checkBatch(n int) error {
	if n == 0 {
		return invalidf("no message to publish")
	}
	if n > BatchPublishLimit {
		return fmt.Errorf("%w: %d messages in one publish, at most %d", ErrTooLarge, n, BatchPublishLimit)
	}
	return nil
}

func checkReceipts(r []string) error {
	if len(r) == 0 {
		return invalidf("no receipt given")
	}
	if len(r) > ReceiveMaxLimit {
		return fmt.Errorf("%w: %d receipts in one call, at most %d", ErrTooLarge, len(r), ReceiveMaxLimit)
	}
	return nil
}

// contentTypeMaxLen bounds Message.ContentType (the store's column is 255 wide).
const contentTypeMaxLen = 255

func printableASCII(s string, allowSpace bool) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c > 0x7e || c < 0x20 || (c == ' ' && !allowSpace) {
			return false
		}
	}
	return true
}

// validate checks a message to publish; maxSize bounds its body.
func (m *Message) validate(maxSize int64) error {
	if int64(len(m.Body)) > maxSize {
		return fmt.Errorf("%w: message body of %d bytes, at most %d", ErrTooLarge, len(m.Body), maxSize)
	}
	if len(m.ContentType) > contentTypeMaxLen || !printableASCII(m.ContentType, true) {
		return invalidf("content type: at most %d printable ASCII characters", contentTypeMaxLen)
	}
	if len(m.Headers) > HeaderCountMax {
		return invalidf("%d headers, at most %d", len(m.Headers), HeaderCountMax)
	}
	for k, v := range m.Headers {
		if k == "" || len(k) > HeaderNameMaxLen || !printableASCII(k, false) {
			return invalidf("header name %q: 1 to %d printable ASCII characters without spaces", k, HeaderNameMaxLen)
		}
		if len(v) > HeaderValueMaxLen || !utf8.ValidString(v) {
			return invalidf("header %q: value must be valid UTF-8 of at most %d bytes", k, HeaderValueMaxLen)
		}
	}
	if m.Priority != nil && (*m.Priority < 0 || *m.Priority > PriorityMax) {
		return invalidf("priority %d out of range 0..%d", *m.Priority, PriorityMax)
	}
	if m.Delay < 0 || m.Delay > PublishDelayMax {
		return invalidf("delay %s out of range 0..%s", m.Delay, PublishDelayMax)
	}
	if m.TTL < 0 || m.TTL > TTLMax {
		return invalidf("ttl %s out of range 0..%s", m.TTL, TTLMax)
	}
	if len(m.IdempotencyKey) > IdempotencyKeyMaxLen || !printableASCII(m.IdempotencyKey, true) {
		return invalidf("idempotency key: at most %d printable ASCII characters", IdempotencyKeyMaxLen)
	}
	return nil
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// h1client is the load generator's HTTP/1.1 client for the broker: keep-alive
// connections, one request at a time on each, the request written from prepared bytes
// and the answer read into a buffer of the connection. It exists because the load
// generator shares the CPUs with the broker and the database: net/http's client cost
// about 40 µs of CPU per one-message publish here, as much as a third of what the
// broker itself spends, and every µs of it is taken from the system being measured
// (load generators of HTTP servers, wrk and h2load, are lean for the same reason). It
// speaks only what the broker answers: a status line, headers, and a body framed by
// Content-Length or chunked.
type h1client struct {
	addr string // host:port

	mu   sync.Mutex
	idle []*h1conn // most recently used last
}

// h1IdleLimit is how long a connection may sit idle before it is closed instead of
// reused: well below the broker's idle timeout (2 minutes), so that a request is never
// written to a connection the server is closing.
const h1IdleLimit = 30 * time.Second

// h1Timeout bounds a request whatever its context (a long-poll receive waits up to
// 30 s).
const h1Timeout = 60 * time.Second

type h1conn struct {
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	head   []byte // request head being written
	body   []byte // the answer's body, valid until the connection is reused
	idleAt time.Time
}

func newH1Client(addr string) *h1client { return &h1client{addr: addr} }

// get takes an idle connection, or dials a new one.
func (h *h1client) get(ctx context.Context) (*h1conn, error) {
	h.mu.Lock()
	for n := len(h.idle); n > 0; n = len(h.idle) {
		c := h.idle[n-1]
		h.idle = h.idle[:n-1]
		if time.Since(c.idleAt) < h1IdleLimit {
			h.mu.Unlock()
			return c, nil
		}
		_ = c.c.Close()
	}
	h.mu.Unlock()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", h.addr)
	if err != nil {
		return nil, err
	}
	return &h1conn{c: nc, br: bufio.NewReaderSize(nc, 64<<10), bw: bufio.NewWriterSize(nc, 16<<10)}, nil
}

func (h *h1client) put(c *h1conn) {
	c.idleAt = time.Now()
	h.mu.Lock()
	h.idle = append(h.idle, c)
	h.mu.Unlock()
}

// close closes every idle connection.
func (h *h1client) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.idle {
		_ = c.c.Close()
	}
	h.idle = nil
}

// do sends one request (hdr: extra header names and values, in pairs) and calls fn
// with the answer's status and body; the body is only valid during fn. A connection
// that failed in any way is closed, never reused.
func (h *h1client) do(ctx context.Context, method, path, ctype string, hdr []string, body []byte, fn func(status int, body []byte) error) error {
	c, err := h.get(ctx)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	status, keep, err := c.roundTrip(ctx, h.addr, method, path, ctype, hdr, body)
	if err != nil {
		_ = c.c.Close()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	ferr := fn(status, c.body)
	if keep {
		h.put(c)
	} else {
		_ = c.c.Close()
	}
	return ferr
}

// roundTrip writes the request and reads the answer into c.body. keep says whether
// the connection may carry another request.
func (c *h1conn) roundTrip(ctx context.Context, host, method, path, ctype string, hdr []string, body []byte) (status int, keep bool, err error) {
	// The context's end ends a request in flight at once, as net/http's would; it is
	// not made the connection's deadline, which can pass a moment before the context
	// reports its error (two timers), making the end of a scenario look like failures.
	if err := c.c.SetDeadline(time.Now().Add(h1Timeout)); err != nil {
		return 0, false, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	b := append(c.head[:0], method...)
	b = append(b, ' ')
	b = append(b, path...)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	if ctype != "" {
		b = append(b, "\r\nContent-Type: "...)
		b = append(b, ctype...)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		b = append(b, "\r\n"...)
		b = append(b, hdr[i]...)
		b = append(b, ": "...)
		b = append(b, hdr[i+1]...)
	}
	b = append(b, "\r\n\r\n"...)
	c.head = b
	if _, err := c.bw.Write(b); err != nil {
		return 0, false, err
	}
	if _, err := c.bw.Write(body); err != nil {
		return 0, false, err
	}
	if err := c.bw.Flush(); err != nil {
		return 0, false, err
	}
	return c.readResponse(method)
}

var errBadResponse = errors.New("malformed HTTP response")

// readResponse reads a status line, the headers and the body of one answer.
func (c *h1conn) readResponse(method string) (status int, keep bool, err error) {
	line, err := c.line()
	if err != nil {
		return 0, false, err
	}
	// "HTTP/1.1 201 Created"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, false, fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, false, fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	keep = line[7] == '1' // HTTP/1.0 closes unless told otherwise; the broker speaks 1.1
	length, chunked := int64(-1), false
	for {
		line, err := c.line()
		if err != nil {
			return 0, false, err
		}
		if len(line) == 0 {
			break
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			return 0, false, fmt.Errorf("%w: header %q", errBadResponse, line)
		}
		name, value := line[:i], bytes.TrimSpace(line[i+1:])
		switch {
		case asciiEqualFold(name, "Content-Length"):
			length, err = strconv.ParseInt(string(value), 10, 64)
			if err != nil || length < 0 {
				return 0, false, fmt.Errorf("%w: Content-Length %q", errBadResponse, value)
			}
		case asciiEqualFold(name, "Transfer-Encoding"):
			chunked = asciiEqualFold(value, "chunked")
		case asciiEqualFold(name, "Connection"):
			if asciiEqualFold(value, "close") {
				keep = false
			}
		}
	}
	c.body = c.body[:0]
	switch {
	case method == "HEAD" || status == 204 || status == 304 || (status >= 100 && status < 200):
		return status, keep, nil
	case chunked:
		return status, keep, c.readChunked()
	case length >= 0:
		c.body = grow(c.body, int(length))
		_, err := io.ReadFull(c.br, c.body)
		return status, keep, err
	default: // the body runs to the end of the connection
		c.body, err = readAllInto(c.br, c.body)
		return status, false, err
	}
}

// readChunked reads a chunked body into c.body (trailers are skipped).
func (c *h1conn) readChunked() error {
	for {
		line, err := c.line()
		if err != nil {
			return err
		}
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("%w: chunk size %q", errBadResponse, line)
		}
		if n == 0 {
			for { // trailers, up to the empty line
				line, err := c.line()
				if err != nil {
					return err
				}
				if len(line) == 0 {
					return nil
				}
			}
		}
		at := len(c.body)
		c.body = grow(c.body, at+int(n))
		if _, err := io.ReadFull(c.br, c.body[at:]); err != nil {
			return err
		}
		if line, err := c.line(); err != nil || len(line) != 0 {
			return fmt.Errorf("%w: no CRLF after a chunk", errBadResponse)
		}
	}
}

// line reads one line without its CRLF; the slice is valid until the next read.
func (c *h1conn) line() ([]byte, error) {
	line, err := c.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: line longer than %d bytes", errBadResponse, c.br.Size())
		}
		return nil, err
	}
	return bytes.TrimRight(line, "\r\n"), nil
}

// grow returns b resized to n bytes, reusing its array when it is large enough.
func grow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:n]
	}
	nb := make([]byte, n, max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}

func readAllInto(r io.Reader, b []byte) ([]byte, error) {
	buf := bytes.NewBuffer(b)
	_, err := buf.ReadFrom(r)
	return buf.Bytes(), err
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

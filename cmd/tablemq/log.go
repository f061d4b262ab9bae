package main

import (
	"bytes"
	"io"
	"log/slog"
	"sync"
)

// startupLogLimit bounds the log output held back during start-up.
const startupLogLimit = 1 << 20

// heldWriter holds its output back until release, so that a failed start-up prints
// only its one-line reason on stderr.
type heldWriter struct {
	mu   sync.Mutex // guards buf, held
	out  io.Writer
	buf  bytes.Buffer
	held bool
}

func newHeldWriter(out io.Writer) *heldWriter {
	return &heldWriter{out: out, held: true}
}

// Write implements io.Writer.
func (w *heldWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.held {
		return w.out.Write(p)
	}
	if w.buf.Len()+len(p) <= startupLogLimit {
		w.buf.Write(p)
	}
	return len(p), nil
}

// release stops holding output back; what was held is written out when flush is true
// and dropped otherwise. Calls after the first do nothing.
func (w *heldWriter) release(flush bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.held {
		return
	}
	if flush {
		_, _ = w.out.Write(w.buf.Bytes())
	}
	w.buf.Reset()
	w.held = false
}

// newLogger returns the logger the options ask for, writing to w.
func newLogger(o *options, w io.Writer) *slog.Logger {
	level, err := parseLevel(o.LogLevel)
	if err != nil {
		level = slog.LevelInfo // validate has rejected it already
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	if o.LogFormat == "json" {
		h = slog.NewJSONHandler(w, hopts)
	} else {
		h = slog.NewTextHandler(w, hopts)
	}
	return slog.New(h)
}

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/tablemq/tablemq/migrations"
)

// largeDelivery is a received message with the large-message fields.
type largeDelivery struct {
	ID      string `json:"id"`
	Receipt string `json:"receipt"`
	Data    string `json:"data"`
	Large   bool   `json:"large"`
	Size    int64  `json:"size"`
}

// receiveLarge leases up to max messages of queue on b.
func (b *broker) receiveLarge(ctx context.Context, queue string, max int, wait string) []largeDelivery {
	b.t.Helper()
	var out struct {
		Messages []largeDelivery `json:"messages"`
	}
	b.mustJSON(ctx, http.MethodPost, "/v1/queues/"+queue+"/receive", map[string]any{"max": max, "wait": wait}, &out, http.StatusOK)
	return out.Messages
}

// bodyURL is the body endpoint of a delivery on b.
func (b *broker) bodyURL(queue string, d largeDelivery) string {
	return b.base + "/v1/queues/" + queue + "/messages/" + d.ID + "/body?receipt=" + url.QueryEscape(d.Receipt)
}

// chunkRows counts the rows of the large-messages table.
func chunkRows(ctx context.Context, t *testing.T, store string) int64 {
	t.Helper()
	var n int64
	require.NoError(t, openSQL(t, store).QueryRowContext(ctx, "SELECT COUNT(*) FROM "+migrations.LargeMessagesDefault).Scan(&n))
	return n
}

// randomBody returns n pseudo-random bytes.
func randomBody(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestE2ELargeUploadKill kills the live with SIGKILL in the middle of a large upload
// (the client streams slowly; chunks are already in the store): after the takeover
// the half upload is not visible, the new live sweeps its chunks, and a large message
// published to the new live round-trips byte for byte.
func TestE2ELargeUploadKill(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		heavy(t)
		ctx := deadline(t)
		const queue = "big"
		p := startPrimary(ctx, t, "primary", store)
		p.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
		b := startBackup(ctx, t, "backup", store)

		// A slow, chunked upload: 64 KiB every 5 ms, up to 32 MiB.
		pr, pw := io.Pipe()
		uploadDone := make(chan error, 1)
		go func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.base+"/v1/queues/"+queue+"/messages", pr)
			if err != nil {
				uploadDone <- err
				return
			}
			resp, err := httpClient.Do(req)
			if err == nil {
				data, _ := io.ReadAll(resp.Body)
				_ = resp.Body.Close()
				err = fmt.Errorf("the upload was answered %d: %s", resp.StatusCode, data)
			}
			_ = pr.CloseWithError(err)
			uploadDone <- err
		}()
		writerDone := make(chan struct{})
		go func() {
			defer close(writerDone)
			piece := randomBody(1, 64<<10)
			for range 512 {
				if _, err := pw.Write(piece); err != nil {
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
			_ = pw.Close()
		}()
		eventually(ctx, t, "chunks of the upload are in the store", func() error {
			if n := chunkRows(ctx, t, store); n == 0 {
				return fmt.Errorf("no chunk rows yet")
			}
			return nil
		})
		p.kill()
		require.Error(t, <-uploadDone, "the upload never got an answer")
		_ = pw.CloseWithError(io.ErrClosedPipe)
		<-writerDone

		b.awaitReady(ctx)
		require.Empty(t, b.receiveLarge(ctx, queue, 10, "500ms"), "the half upload is not visible")
		require.Zero(t, b.queue(ctx, queue).Depth)
		eventually(ctx, t, "the new live swept the abandoned chunks", func() error {
			if n := chunkRows(ctx, t, store); n != 0 {
				return fmt.Errorf("%d chunk rows left", n)
			}
			return nil
		})

		// A large message published to the new live round-trips.
		body := randomBody(2, 3<<20+17)
		st, data := b.request(ctx, http.MethodPost, "/v1/queues/"+queue+"/messages", body, map[string]string{"Content-Type": "application/x-big"})
		require.Equal(t, http.StatusCreated, st, "%s", data)
		ds := b.receiveLarge(ctx, queue, 10, "5s")
		require.Len(t, ds, 1)
		require.True(t, ds[0].Large)
		require.Equal(t, int64(len(body)), ds[0].Size)
		got := download(ctx, t, b.bodyURL(queue, ds[0]), -1)
		require.Equal(t, sha256.Sum256(body), sha256.Sum256(got))
		b.ack(ctx, queue, []string{ds[0].Receipt})
		require.Zero(t, chunkRows(ctx, t, store))
		require.Equal(t, 0, b.stop(ctx), "exit code after SIGTERM")
	})
}

// download GETs url and returns the body; stopAfter >= 0 returns after that many bytes
// with the connection still open (the caller's ctx ends it).
func download(ctx context.Context, t *testing.T, u string, stopAfter int) []byte {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	require.NoError(t, err)
	resp, err := httpClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, data)
	}
	require.NotEmpty(t, resp.Header.Get("Content-Length"))
	if stopAfter >= 0 {
		buf := make([]byte, stopAfter)
		_, err := io.ReadFull(resp.Body, buf)
		require.NoError(t, err)
		return buf
	}
	data, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	n, err := strconv.Atoi(resp.Header.Get("Content-Length"))
	require.NoError(t, err)
	require.Len(t, data, n)
	return data
}

// TestE2ELargeDownloadTakeover kills the live with SIGKILL in the middle of the
// download of a large body: the consumer fetches the whole body again from the new
// live with the same receipt, the checksum matches, and its ack removes the chunks.
func TestE2ELargeDownloadTakeover(t *testing.T) {
	t.Parallel()
	forEachBackend(t, func(t *testing.T, store string) {
		heavy(t)
		ctx := deadline(t)
		const queue = "big"
		p := startPrimary(ctx, t, "primary", store)
		p.mustJSON(ctx, http.MethodPut, "/v1/queues/"+queue, nil, nil, http.StatusCreated)
		b := startBackup(ctx, t, "backup", store)

		body := randomBody(3, 8<<20+5)
		st, data := p.request(ctx, http.MethodPost, "/v1/queues/"+queue+"/messages", body, map[string]string{"Content-Type": "application/x-big"})
		require.Equal(t, http.StatusCreated, st, "%s", data)
		var pub struct {
			ID string `json:"id"`
		}
		require.NoError(t, json.Unmarshal(data, &pub))
		ds := p.receiveLarge(ctx, queue, 1, "5s")
		require.Len(t, ds, 1)
		d := ds[0]
		require.Equal(t, pub.ID, d.ID)
		require.True(t, d.Large)
		require.Empty(t, d.Data)

		// Start the download, read its first MiB, then kill the live under it. The
		// client's receive buffer is small, so that most of the body is still in the
		// store, not in socket buffers, when the live dies.
		slow := smallBufferClient(t)
		dctx, cancel := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(dctx, http.MethodGet, p.bodyURL(queue, d), nil)
		require.NoError(t, err)
		resp, err := slow.Do(req)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, strconv.Itoa(len(body)), resp.Header.Get("Content-Length"))
		first := make([]byte, 1<<20)
		_, err = io.ReadFull(resp.Body, first)
		require.NoError(t, err)
		require.True(t, bytes.Equal(body[:1<<20], first))
		p.kill()
		rest, err := io.ReadAll(resp.Body)
		require.Error(t, err, "the cut download must not look complete")
		require.Less(t, len(first)+len(rest), len(body))
		_ = resp.Body.Close()
		cancel()

		// The same receipt fetches the whole body from the new live.
		b.awaitReady(ctx)
		got := download(ctx, t, b.bodyURL(queue, d), -1)
		require.Equal(t, sha256.Sum256(body), sha256.Sum256(got), "the body read again from the new live")
		b.ack(ctx, queue, []string{d.Receipt})
		require.Zero(t, chunkRows(ctx, t, store), "the ack removed the chunks")
		require.Zero(t, b.queue(ctx, queue).Depth)
		require.Equal(t, 0, b.stop(ctx), "exit code after SIGTERM")
	})
}

// smallBufferClient returns an HTTP client whose connections have a 64 KiB receive
// buffer; its idle connections are closed at the end of t.
func smallBufferClient(t *testing.T) *http.Client {
	t.Helper()
	dialer := &net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 64<<10)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	tr := &http.Transport{DialContext: dialer.DialContext, DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// Package client is the Go client of tablemq: typed calls for its REST API, and a
// consumer loop, over a list of broker URLs of one live-backup group that it fails
// over between. It depends on the standard library only.
//
// # Failover
//
// A Client is made with the base URLs of every instance of a group (the live one and
// its backups). Only the live instance serves messaging; the others answer 503
// not_live. The client remembers which URL answered last as live and sends each call
// there first. An attempt is retried on the next URL when it
//
//   - gets no answer: a connection error, an answer cut off, or the request timeout
//     (WithRequestTimeout) passed;
//   - is answered 503 (not_live or unavailable), or 502/504 by a proxy. A Retry-After
//     header keeps that URL out of the rotation for that long (at most
//     RetryAfterMax, or the cap of WithRetryAfterCap); the other URLs are still tried.
//
// Once every URL was tried, the client pauses with exponential backoff and jitter
// (WithBackoff) and starts another round, until the call's retry deadline
// (WithRetryDeadline: no new attempt starts later than that after the call began)
// or its ctx ends. Any other answer is final and returned at once, never retried:
// 2xx, and 4xx or 500 as an *APIError, which matches the sentinels of this package
// with errors.Is (ErrNotFound, ErrInvalid, ErrConflict, ErrTooLarge, ...). A call
// that gave up returns its last error, so errors.Is(err, ErrNotLive) or
// errors.Is(err, ErrUnavailable) tells that no live broker was found.
//
// # Why retrying is safe
//
// A failed attempt may have been carried out by the broker with only its answer
// lost. Every call is retried anyway, for these reasons:
//
//   - Publish, PublishAddress and the batch forms send an Idempotency-Key with every
//     message: the caller's, or a random one generated once per call (and per
//     message of a batch), and the same key on every retry of that call. A retry of
//     a publish that was committed is recognized by the broker, which stores nothing
//     and answers the first id, so the message is stored exactly once. Without the
//     key, a retry after a lost answer would store the message twice; the key is what
//     makes the retry safe. It holds for persistent messages within the broker's
//     duplicate window (the keys live in the store, so across a failover too). An
//     attempt still under way on a deposed live broker cannot store a second copy
//     either: that broker's writes are fenced once another has taken over.
//   - Receive: messages leased by an attempt whose answer was lost stay invisible
//     until their lease ends, then are delivered again (at least once). Nothing is
//     lost; they are only late.
//   - Ack, Nack and Extend are idempotent per receipt. A receipt acked by an attempt
//     whose answer was lost is reported by the retry as ErrReceiptUnknown: results
//     are always exactly what the broker said, per receipt, and the caller decides.
//   - Queue, address and binding calls are idempotent by design (create answers
//     created=false, delete answers not found on a retry after a lost answer). A
//     retried purge purges again, messages published in between included.
//
// # Large messages
//
// A body above the broker's large-message threshold (100 KiB by default) is stored
// in chunks and not inlined in a receive answer: Delivery.Large is set, Body is empty
// and Size gives its length; Client.Body streams it (for the delivery's receipt).
// Client.PublishStream publishes a body of any size from an io.Reader without
// holding it in memory; an io.Seeker body is sent again from its start on a
// failover. A body fetch cut by a failover is fetched again with the same receipt.
//
// # Consuming
//
// Client.Consume runs a receive loop with a handler per delivery, extends the lease
// while the handler runs, acks on success and nacks on error, keeps going through
// failovers, and returns when its ctx ends without leaving a goroutine behind.
//
// # Example
//
//	c, err := client.New([]string{"http://10.0.0.1:8780", "http://10.0.0.2:8780"})
//	if err != nil {
//		return err
//	}
//	defer c.Close()
//	if _, err := c.CreateQueue(ctx, "orders", client.QueueConfig{}); err != nil {
//		return err
//	}
//	res, err := c.Publish(ctx, "orders", client.Message{Body: []byte(`{"id":42}`), ContentType: "application/json"})
//	if err != nil {
//		return err
//	}
//	log.Printf("published %s", res.ID)
//	return c.Consume(ctx, "orders", func(ctx context.Context, d client.Delivery) error {
//		log.Printf("got %s: %s", d.ID, d.Body)
//		return nil // ack
//	}, client.ConsumeOptions{Concurrency: 4})
package client

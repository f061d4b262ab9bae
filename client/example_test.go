package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/tablemq/tablemq/client"
)

// A client for a live broker and its backup: publish, then consume until ctx ends.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c, err := client.New([]string{"http://10.0.0.1:8780", "http://10.0.0.2:8780"},
		client.WithRetryDeadline(20*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if _, err := c.CreateQueue(ctx, "orders", client.QueueConfig{MaxDeliveries: 5, DeadLetterQueue: "orders.dlq"}); err != nil {
		log.Fatal(err)
	}
	// Retried across a failover with the same generated Idempotency-Key: stored once.
	res, err := c.Publish(ctx, "orders", client.Message{Body: []byte(`{"order":42}`), ContentType: "application/json"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("published", res.ID)

	err = c.Consume(ctx, "orders", func(ctx context.Context, d client.Delivery) error {
		fmt.Printf("order %s: %s\n", d.ID, d.Body)
		return nil // ack; an error would nack
	}, client.ConsumeOptions{Concurrency: 4, Lease: time.Minute})
	if err != nil {
		log.Fatal(err)
	}
}

// Typed errors work with errors.Is.
func ExampleAPIError() {
	c, err := client.New([]string{"http://127.0.0.1:8780"})
	if err != nil {
		log.Fatal(err)
	}
	_, err = c.GetQueue(context.Background(), "missing")
	switch {
	case errors.Is(err, client.ErrQueueNotFound):
		fmt.Println("no such queue")
	case errors.Is(err, client.ErrNotLive), errors.Is(err, client.ErrUnavailable):
		fmt.Println("no live broker reachable before the retry deadline")
	case err != nil:
		log.Fatal(err)
	}
}

// Receive, handle and ack by hand.
func ExampleClient_Receive() {
	ctx := context.Background()
	c, err := client.New([]string{"http://127.0.0.1:8780"})
	if err != nil {
		log.Fatal(err)
	}
	ds, err := c.Receive(ctx, "orders", client.ReceiveOptions{Max: 10, Wait: 20 * time.Second, Lease: 30 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range ds {
		fmt.Printf("%s (delivery %d): %s\n", d.ID, d.DeliveryCount, d.Body)
		res, err := c.Ack(ctx, "orders", d.Receipt)
		if err != nil {
			log.Fatal(err)
		}
		if !res[0].OK {
			// Most often ErrReceiptUnknown: the lease ended first (the message will be
			// delivered again), or a retried ack whose first attempt succeeded.
			fmt.Println("ack refused:", res[0].Err)
		}
	}
}

package e2e

import (
	"fmt"
	"slices"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/internal/rabbittest"
)

// TestDomainRouting: with routing key inbound.{domain}, one SMTP message
// to two domains is one 250 and two AMQP messages with the message_ids
// <queue ID>.alpha.example and <queue ID>.beta.example, each routed by its (lower-cased) domain and carrying only
// that domain's recipients. A queue bound to one domain's key gets only
// that domain's copy.
func TestDomainRouting(t *testing.T) {
	for _, env := range []string{broker.EnvelopeTrace, broker.EnvelopeBoth} {
		t.Run(env, func(t *testing.T) { testDomainRouting(t, env) })
	}
}

func testDomainRouting(t *testing.T, env string) {
	bc := brokerConfig(t, rabbittest.URL)
	bc.Envelope = env
	bc.RoutingKey = "inbound.{domain}"
	s := startStack(t, bc, true)

	// A second queue for one domain, bound after the broker declared the
	// exchange.
	betaQueue := bc.Queue + ".beta"
	deleteAtEnd(t, []string{betaQueue}, nil)
	ch := rabbittest.AdminChannel(t)
	if _, err := ch.QueueDeclare(betaQueue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(betaQueue, "inbound.beta.example", bc.Exchange, false, nil); err != nil {
		t.Fatal(err)
	}

	tx := &transaction{
		helo: "route.example", ehlo: true, from: "sender@example.org", body: "7BIT",
		rcpts:   []string{"a1@Alpha.Example", "b1@beta.example", "a2@alpha.example"},
		content: []byte("Subject: two domains\r\n\r\nhello\r\n"),
	}
	c := s.session(t, tx.helo, true)
	if err := tx.send(c); err != nil {
		t.Fatal(err)
	}
	if r, err := c.Cmd("NOOP"); err != nil || r.Last() != "250 2.0.0 OK" {
		t.Fatalf("after the 250 the session must be back at commands with no further reply pending: %q, %v", r.String(), err)
	}

	want := map[string][]string{
		"inbound.alpha.example": {"a1@Alpha.Example", "a2@alpha.example"},
		"inbound.beta.example":  {"b1@beta.example"},
	}
	got := consume(t, bc.Queue, 2, 500*time.Millisecond, 10*time.Second)
	if len(got) != 2 {
		t.Fatalf("%d messages in the queue bound with inbound.#, want 2", len(got))
	}
	for _, d := range got {
		rcpts, ok := want[d.RoutingKey]
		if !ok {
			t.Errorf("copy with routing key %q", d.RoutingKey)
			continue
		}
		delete(want, d.RoutingKey)
		// Each copy is the whole message (its Received: header, with no
		// "for" clause since the transaction had three recipients), with
		// only its domain's recipients in smtp-recipients.
		t.Run(d.RoutingKey, func(t *testing.T) { checkDelivery(t, tx, d, bc, d.RoutingKey, rcpts) })
	}
	if len(want) != 0 {
		t.Errorf("no copy for %v", want)
	}
	beta := consume(t, betaQueue, 1, 300*time.Millisecond, 5*time.Second)
	if len(beta) != 1 || beta[0].RoutingKey != "inbound.beta.example" || beta[0].MessageId != tx.queueID+".beta.example" {
		t.Errorf("queue bound to inbound.beta.example got %d messages: %v", len(beta), keys(beta))
	}
}

func keys(ds []amqp.Delivery) []string {
	var k []string
	for _, d := range ds {
		k = append(k, fmt.Sprintf("%s/%s", d.RoutingKey, d.MessageId))
	}
	slices.Sort(k)
	return k
}

// TestDomainRoutingOneCopyFails: when one domain's copy cannot be routed
// the whole message is answered 451 4.3.5 although the other copy was
// stored; the client's retry stores that copy again (the contract's
// duplicates), and gets 250 once every copy is routable.
func TestDomainRoutingOneCopyFails(t *testing.T) {
	bc := brokerConfig(t, rabbittest.URL)
	bc.RoutingKey = "inbound.{domain}"
	bc.Envelope = broker.EnvelopeHeaders // reads smtp-recipients
	bc.Declare = false
	alpha, beta := bc.Queue+".alpha", bc.Queue+".beta"
	deleteAtEnd(t, []string{alpha, beta}, nil)
	ch := rabbittest.AdminChannel(t)
	if err := ch.ExchangeDeclare(bc.Exchange, "topic", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{alpha, beta} {
		if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.QueueBind(alpha, "inbound.alpha.example", bc.Exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	s := startStack(t, bc, true)
	c := s.session(t, "route.example", true)
	rcpts := []string{"a@alpha.example", "b@beta.example"}
	r, err := c.Send("sender@example.org", rcpts, testContent)
	if err != nil {
		t.Fatal(err)
	}
	if r.Last() != replyUnroutable {
		t.Fatalf("final reply %q, want %q", r.String(), replyUnroutable)
	}
	first := consume(t, alpha, 1, 300*time.Millisecond, 5*time.Second)
	if len(first) != 1 || fmt.Sprint(first[0].Headers["smtp-recipients"]) != "[a@alpha.example]" {
		t.Fatalf("alpha queue after the 451: %v", keys(first))
	}

	if err := ch.QueueBind(beta, "inbound.beta.example", bc.Exchange, false, nil); err != nil {
		t.Fatal(err)
	}
	r, err = c.Send("sender@example.org", rcpts, testContent)
	if err != nil {
		t.Fatal(err)
	}
	id, ok := r.QueueID()
	if !ok {
		t.Fatalf("retry: final reply %q, want 250", r.String())
	}
	if a := consume(t, alpha, 1, 300*time.Millisecond, 5*time.Second); len(a) != 1 || a[0].MessageId != id+".alpha.example" {
		t.Errorf("alpha queue after the retry: %v, want %s.alpha.example", keys(a), id)
	}
	if b := consume(t, beta, 1, 300*time.Millisecond, 5*time.Second); len(b) != 1 || b[0].MessageId != id+".beta.example" {
		t.Errorf("beta queue after the retry: %v, want %s.beta.example", keys(b), id)
	}
	if first[0].MessageId == id+".alpha.example" {
		t.Errorf("the retry reused queue ID %s", id)
	}
}

// Package rabbittest holds what tests that talk to the real RabbitMQ share:
// its address, unique names for their exchanges and queues, a plain
// channel for setting up and inspecting them, a consumer that reads what
// reached a queue, a fault proxy in front of the broker, and a logger
// into the test's log for the broker and the engine a test starts.
package rabbittest

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/faultproxy"
)

const (
	// Addr is the RabbitMQ the tests use (started before they run; see
	// tools/rabbitmq-up).
	Addr = "127.0.0.1:5672"
	// URL is Addr with the default guest credentials.
	URL = "amqp://guest:guest@" + Addr + "/"
)

// UniqueName returns prefix.<test name>.<random>: a name for the
// exchange and queue of one test, so that tests running in parallel, and
// leftovers of a failed run, never meet.
func UniqueName(t testing.TB, prefix string) string {
	n := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	return fmt.Sprintf("%s.%s.%08x", prefix, n, rand.Uint32())
}

// AdminChannel is a plain amqp091-go channel for setting up, inspecting
// and deleting what a test uses; its connection closes when the test ends.
func AdminChannel(t testing.TB) *amqp.Channel {
	t.Helper()
	conn, err := amqp.Dial(URL)
	if err != nil {
		t.Fatalf("RabbitMQ at %s is needed for this test: %v", Addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// Consume reads queue until want messages arrived and then idle passed
// without another one; it fails the test when fewer than want arrive
// within the time given. Its consumer has a connection of its own and is
// cancelled on return, and only the messages returned are acknowledged:
// whatever else was on its way stays in the queue.
func Consume(t testing.TB, queue string, want int, idle, within time.Duration) []amqp.Delivery {
	t.Helper()
	conn, err := amqp.Dial(URL)
	if err != nil {
		t.Fatalf("RabbitMQ at %s is needed for this test: %v", Addr, err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.Qos(2000, 0, false); err != nil {
		t.Fatal(err)
	}
	dc, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		t.Fatalf("consume %s: %v", queue, err)
	}
	var got []amqp.Delivery
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		wait := within
		if len(got) >= want {
			wait = idle
		}
		select {
		case d, ok := <-dc:
			if !ok {
				t.Fatalf("consumer of %s closed after %d messages", queue, len(got))
			}
			if err := d.Ack(false); err != nil {
				t.Fatalf("ack: %v", err)
			}
			got = append(got, d)
		case <-time.After(wait):
			if len(got) < want {
				t.Fatalf("consumed %d of %d messages from %s", len(got), want, queue)
			}
			return got
		case <-deadline.C:
			if len(got) < want {
				t.Fatalf("consumed %d of %d messages from %s within %s", len(got), want, queue, within)
			}
			return got
		}
	}
}

// Proxy is a fault-injecting proxy in front of the test RabbitMQ, closed
// when the test ends.
func Proxy(t testing.TB) *faultproxy.Proxy {
	t.Helper()
	return faultproxy.ForTest(t, Addr)
}

// ProxyURL is the AMQP URL of RabbitMQ through p.
func ProxyURL(p *faultproxy.Proxy) string { return "amqp://guest:guest@" + p.Addr() + "/" }

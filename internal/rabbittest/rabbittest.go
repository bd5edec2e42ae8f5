// Package rabbittest holds what tests that talk to the real RabbitMQ share:
// its address, unique names for their exchanges and queues, and a plain
// channel for setting up and inspecting them.
package rabbittest

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
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

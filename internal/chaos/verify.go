package chaos

import (
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Match is the queue held against the generator's acknowledgements.
type Match struct {
	Acknowledged int // queue IDs the generator got a 250 for
	InQueue      int // messages consumed
	DistinctIDs  int // distinct message_id among them

	Lost    int      // acknowledged, not in the queue: must be 0
	LostIDs []string // the first few, for the report

	SameID           int // copies of a message_id beyond its first (lsmtp publishes each ID once)
	Resent           int // copies of a generator message beyond its first, under other queue IDs: stored although answered 4xx (or left without a reply), then sent again
	StoredWithout250 int // queue IDs in the queue the generator never got a 250 for
	Foreign          int // messages without the generator's token
}

// collector gathers what the consumer reads.
type collector struct {
	byID    map[string]int
	tokens  map[string]map[string]struct{} // token -> queue IDs it was stored under
	count   int
	foreign int
}

func newCollector() *collector {
	return &collector{byID: map[string]int{}, tokens: map[string]map[string]struct{}{}}
}

func (c *collector) add(messageID string, body []byte) {
	c.count++
	c.byID[messageID]++
	tok, ok := tokenOf(body)
	if !ok {
		c.foreign++
		return
	}
	ids := c.tokens[tok]
	if ids == nil {
		ids = map[string]struct{}{}
		c.tokens[tok] = ids
	}
	ids[messageID] = struct{}{}
}

// match holds what was collected against acked (queue ID -> token).
func (c *collector) match(acked map[string]ackInfo) Match {
	m := Match{Acknowledged: len(acked), InQueue: c.count, DistinctIDs: len(c.byID), Foreign: c.foreign}
	for id := range acked {
		if c.byID[id] == 0 {
			m.Lost++
			if len(m.LostIDs) < 20 {
				m.LostIDs = append(m.LostIDs, id)
			}
		}
	}
	for id, n := range c.byID {
		m.SameID += n - 1
		if _, ok := acked[id]; !ok {
			m.StoredWithout250++
		}
	}
	for _, ids := range c.tokens {
		m.Resent += len(ids) - 1
	}
	return m
}

// drainQueue consumes every message in queue, acknowledging them, and
// hands each to add. It stops when the queue's message count (read
// first) has been consumed and nothing more arrived for idle, or when
// within ends (an error then).
func drainQueue(url, queue string, idle, within time.Duration, add func(amqp.Delivery)) (int, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return 0, err
	}
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("queue %s: %w", queue, err)
	}
	if err := ch.Qos(1000, 0, false); err != nil {
		return 0, err
	}
	deliveries, err := ch.Consume(queue, "lsmtp-chaos-verify", false, true, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("consume %s: %w", queue, err)
	}
	n := 0
	var last amqp.Delivery
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	quiet := time.NewTimer(idle)
	defer quiet.Stop()
	for {
		select {
		case d, ok := <-deliveries:
			if !ok {
				return n, fmt.Errorf("consumer closed after %d of %d messages", n, q.Messages)
			}
			add(d)
			n++
			last = d
			if n%500 == 0 {
				if err := d.Ack(true); err != nil {
					return n, err
				}
			}
			if !quiet.Stop() {
				<-quiet.C
			}
			quiet.Reset(idle)
		case <-quiet.C:
			if n < q.Messages {
				quiet.Reset(idle)
				continue
			}
			if n%500 != 0 {
				if err := last.Ack(true); err != nil {
					return n, err
				}
			}
			return n, ch.Cancel("lsmtp-chaos-verify", false)
		case <-deadline.C:
			return n, fmt.Errorf("consumed %d of %d messages within %s", n, q.Messages, within)
		}
	}
}

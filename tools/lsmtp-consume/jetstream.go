package main

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsSource consumes a JetStream stream through a durable pull consumer:
// the consumer remembers, across runs, what was acknowledged, and
// delivers again what was not once --nats-ack-wait passed.
type natsSource struct {
	nc       *nats.Conn
	cons     jetstream.Consumer
	prefetch int
	batch    jetstream.MessageBatch // the fetch being handed out, nil before the first
}

// natsOptions are the connection options from the command line.
func natsOptions(o options) []nats.Option {
	opts := []nats.Option{nats.Name("lsmtp-consume"), nats.Timeout(10 * time.Second)}
	switch {
	case o.natsUser != "":
		opts = append(opts, nats.UserInfo(o.natsUser, o.natsPassword))
	case o.natsToken != "":
		opts = append(opts, nats.Token(o.natsToken))
	}
	if o.natsCreds != "" {
		opts = append(opts, nats.UserCredentials(o.natsCreds))
	}
	return opts
}

func openNATS(ctx context.Context, o options) (*natsSource, error) {
	urls := strings.Join(o.natsURLs, ",")
	nc, err := nats.Connect(urls, natsOptions(o)...)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", redactNATS(o.natsURLs), err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	stream, err := js.Stream(ctx, o.natsStream)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("stream %q: %w", o.natsStream, err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       o.natsDurable,
		FilterSubject: o.natsSubject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.natsAckWait,
		MaxAckPending: o.prefetch,
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("consumer %q on stream %q: %w", o.natsDurable, o.natsStream, err)
	}
	return &natsSource{nc: nc, cons: cons, prefetch: o.prefetch}, nil
}

// next hands out the current fetch's messages, and fetches at most left
// (and --prefetch) more when it is through: what is fetched is delivered
// to this run, and what it does not take waits for the ack wait before
// another run gets it.
func (s *natsSource) next(ctx context.Context, left int) (*message, error) {
	for {
		if s.batch != nil {
			select {
			case m, ok := <-s.batch.Messages():
				if ok {
					return natsMessage(m)
				}
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			// The fetch ended: it expired without (enough) messages,
			// or failed.
			if err := s.batch.Error(); err != nil {
				return nil, err
			}
		}
		n := s.prefetch
		if left > 0 {
			n = min(n, left)
		}
		batch, err := s.cons.Fetch(n, jetstream.FetchContext(ctx))
		if err != nil {
			return nil, err
		}
		s.batch = batch
	}
}

// close makes JetStream deliver again at once what was fetched but not
// handed out (a negative acknowledgement), then disconnects, flushing
// what is still buffered.
func (s *natsSource) close() {
	if s.batch != nil {
	drain:
		for {
			select {
			case m, ok := <-s.batch.Messages():
				if !ok {
					break drain
				}
				m.Nak()
			default:
				break drain
			}
		}
	}
	s.nc.Close()
}

// ackTimeout bounds the wait for JetStream's answer to an ack.
const ackTimeout = 10 * time.Second

func natsMessage(m jetstream.Msg) (*message, error) {
	md, err := m.Metadata()
	if err != nil {
		return nil, fmt.Errorf("JetStream message on %q: %w", m.Subject(), err)
	}
	h := m.Headers()
	msg := &message{
		id: h.Get(jetstream.MsgIDHeader), seq: md.Sequence.Stream, body: m.Data(),
		summary: fmt.Sprintf("subject %q, stream %s sequence %d, stored %s, delivery %d",
			m.Subject(), md.Stream, md.Sequence.Stream, md.Timestamp.UTC().Format(time.RFC3339), md.NumDelivered),
		// A double ack waits for JetStream to take it: when it
		// returns, the message will not come again.
		ack: func() error {
			ctx, cancel := context.WithTimeout(context.Background(), ackTimeout)
			defer cancel()
			return m.DoubleAck(ctx)
		},
		requeue: func() { m.Nak() },
	}
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		vals := make([]string, len(h[k]))
		for i, v := range h[k] {
			vals[i] = strconv.Quote(v)
		}
		msg.headers = append(msg.headers, header{k, strings.Join(vals, ", ")})
	}
	return msg, nil
}

// redactNATS names the servers without credentials in their URLs.
func redactNATS(urls []string) string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = u
		if at := strings.LastIndexByte(u, '@'); at >= 0 {
			if scheme := strings.Index(u, "://"); scheme >= 0 && scheme < at {
				out[i] = u[:scheme+3] + "xxxxx@" + u[at+1:]
			} else {
				out[i] = "xxxxx@" + u[at+1:]
			}
		}
	}
	return strings.Join(out, ",")
}

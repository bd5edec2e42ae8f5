package smtptest

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// Recorded is a message as a Recorder was handed it, copied (the engine
// reuses what it handed over once the message is completed), with the
// verdict the Recorder gave.
type Recorded struct {
	QueueID    string
	Sender     string
	Recipients []string
	ClientIP   string
	Helo       string
	Size       int64
	Body       sink.BodyType
	SMTPUTF8   bool
	Data       string // our Received: header, then the message as received
	TLSVersion string // sink.Message's TLS and AUTH facts
	TLSCipher  string
	AuthUser   string
	Err        error // the verdict: nil for stored
}

// Content is the message as the client sent it: Data without our
// Received: header, which ends at the first line after the "Received:"
// line that does not start with a tab.
func (r Recorded) Content() string {
	rest := r.Data
	if !strings.HasPrefix(rest, "Received: ") {
		return rest
	}
	for {
		i := strings.Index(rest, "\r\n")
		if i < 0 {
			return ""
		}
		rest = rest[i+2:]
		if !strings.HasPrefix(rest, "\t") {
			return rest
		}
	}
}

// Recorder is a sink.Sink for tests: it records every message it is handed
// and completes each with a verdict, inside Submit unless a field or a
// hold says later. The fields are set before the first Submit.
type Recorder struct {
	// Verdict chooses the outcome of the n-th message (counted from 1);
	// nil stores every message.
	Verdict func(n int) error
	// Async completes from a goroutine of its own after Delay, as a
	// broker's confirm arrives.
	Async bool
	Delay time.Duration
	// Deferred keeps every verdict until CompletePending, which the test
	// calls on its own goroutine: "later" for a harness that plays the
	// event loop itself and must stay deterministic.
	Deferred bool
	// Envelope is what Limits reports (sink.Limiter): the limits of a
	// real sink, for the engine to enforce. The zero value is no limit.
	Envelope sink.Limits

	mu      sync.Mutex
	msgs    []Recorded
	pending []pending
	all     chan struct{}            // HoldAll's gate, nil when open
	gates   map[string]chan struct{} // Hold's gates, by HELO name
}

type pending struct {
	msg *sink.Message
	err error
}

var (
	_ sink.Sink    = (*Recorder)(nil)
	_ sink.Limiter = (*Recorder)(nil)
)

// Limits implements sink.Limiter: it reports Envelope.
func (r *Recorder) Limits() sink.Limits { return r.Envelope }

// Submit implements sink.Sink.
func (r *Recorder) Submit(m *sink.Message) {
	rec := record(m)
	r.mu.Lock()
	if r.Verdict != nil {
		rec.Err = r.Verdict(len(r.msgs) + 1)
	}
	r.msgs = append(r.msgs, rec)
	all, gate := r.all, r.gates[rec.Helo]
	if r.Deferred {
		r.pending = append(r.pending, pending{m, rec.Err})
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	if !r.Async && all == nil && gate == nil {
		m.Done.Complete(m, rec.Err)
		return
	}
	go func() {
		if all != nil {
			<-all
		}
		if gate != nil {
			<-gate
		}
		time.Sleep(r.Delay)
		m.Done.Complete(m, rec.Err)
	}()
}

// Close implements sink.Sink; it does not wait for held messages.
func (*Recorder) Close(context.Context) error { return nil }

// record copies what a sink was handed and releases the body buffer, as a
// real sink does.
func record(m *sink.Message) Recorded {
	r := Recorded{
		QueueID:  m.QueueID,
		Sender:   string(m.Sender),
		ClientIP: m.ClientIP,
		Helo:     string(m.Helo),
		Size:     m.Size,
		Body:     m.Body,
		SMTPUTF8: m.SMTPUTF8,

		TLSVersion: m.TLSVersion,
		TLSCipher:  m.TLSCipher,
		AuthUser:   string(m.AuthUser),
	}
	if m.Data != nil {
		r.Data = string(m.Data.B)
	}
	for _, rc := range m.Recipients {
		r.Recipients = append(r.Recipients, string(rc))
	}
	m.ReleaseData()
	return r
}

// Messages returns every message recorded so far, in the order handed.
func (r *Recorder) Messages() []Recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Recorded(nil), r.msgs...)
}

// ByHelo returns the messages whose HELO name is helo, so that tests
// sharing one server see only their own.
func (r *Recorder) ByHelo(helo string) []Recorded {
	r.mu.Lock()
	defer r.mu.Unlock()
	var mine []Recorded
	for _, m := range r.msgs {
		if m.Helo == helo {
			mine = append(mine, m)
		}
	}
	return mine
}

// Forget drops the recordings (test bookkeeping in long runs).
func (r *Recorder) Forget() {
	r.mu.Lock()
	r.msgs = nil
	r.mu.Unlock()
}

// Hold makes the verdicts on messages whose HELO name is helo wait until
// Release(helo), as they would wait for a slow broker.
func (r *Recorder) Hold(helo string) {
	r.mu.Lock()
	if r.gates == nil {
		r.gates = make(map[string]chan struct{})
	}
	r.gates[helo] = make(chan struct{})
	r.mu.Unlock()
}

// Release completes what Hold(helo) held, and lets later messages pass.
func (r *Recorder) Release(helo string) {
	r.mu.Lock()
	if g := r.gates[helo]; g != nil {
		close(g)
		delete(r.gates, helo)
	}
	r.mu.Unlock()
}

// HoldAll makes every verdict wait until ReleaseAll.
func (r *Recorder) HoldAll() {
	r.mu.Lock()
	r.all = make(chan struct{})
	r.mu.Unlock()
}

// ReleaseAll completes what HoldAll held, and lets later messages pass.
func (r *Recorder) ReleaseAll() {
	r.mu.Lock()
	if r.all != nil {
		close(r.all)
		r.all = nil
	}
	r.mu.Unlock()
}

// Pending is how many Deferred verdicts wait for CompletePending.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending)
}

// CompletePending gives the Deferred verdicts, on the caller's goroutine.
func (r *Recorder) CompletePending() {
	r.mu.Lock()
	p := r.pending
	r.pending = nil
	r.mu.Unlock()
	for _, g := range p {
		g.msg.Done.Complete(g.msg, g.err)
	}
}

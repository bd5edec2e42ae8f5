package engine

import (
	"sync/atomic"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/hist"
)

// RefuseReason says why a connection was refused at accept.
type RefuseReason uint8

const (
	RefusedMaxConns RefuseReason = iota // Config.MaxConns reached
	RefusedPerIP                        // Config.MaxConnsPerIP reached
	RefusedDraining                     // shutting down
	RefusedDenied                       // client address not allowed
	RefusedRate                         // per-IP connection rate exceeded
	RefusedProxy                        // bad or untrusted PROXY header
	numRefuseReasons
)

var refuseReasonNames = [numRefuseReasons]string{"max_conns", "per_ip", "draining", "denied", "rate", "proxy"}

func (r RefuseReason) String() string { return refuseReasonNames[r] }

// numVerbs sizes per-verb counters.
const numVerbs = int(codec.VerbXCLIENT) + 1

// Outcome is what became of a message whose body arrived.
type Outcome uint8

const (
	OutcomeAccepted    Outcome = iota // 250: the sink stored it
	OutcomeSinkFailed                 // 451 4.3.0: the broker failed or did not confirm
	OutcomeSinkBusy                   // 451 4.3.2: the hand-off was full
	OutcomeShutdown                   // 421 4.3.2: shutting down
	OutcomeNoMemory                   // 451 4.3.1: in-flight byte budget exhausted
	OutcomeRateLimited                // 450 4.7.1: per-IP message rate exceeded
	OutcomeTooBig                     // 552 5.3.4
	OutcomeBareEOL                    // 554 5.6.0
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"accepted", "sink_failed", "sink_busy", "shutdown", "no_memory", "rate_limited", "too_big", "bare_eol"}

func (o Outcome) String() string { return outcomeNames[o] }

// Temporary reports whether the client was told to try again.
func (o Outcome) Temporary() bool { return o >= OutcomeSinkFailed && o <= OutcomeRateLimited }

// Stats are the engine's counters. Everything is an atomic updated on the
// hot path without allocation; the metrics exporter reads them at scrape
// time.
type Stats struct {
	Accepted  atomic.Int64                   // connections accepted
	Refused   [numRefuseReasons]atomic.Int64 // connections refused, by reason
	Open      atomic.Int64                   // connections open now
	Commands  [numVerbs][6]atomic.Int64      // by verb and reply class (first digit)
	Messages  [numOutcomes]atomic.Int64      // messages by outcome
	BytesRecv atomic.Int64                   // octets read from clients
	// MessageSize is the size of accepted messages, octets.
	MessageSize *hist.Histogram
	// InFlightBytes is the bytes of message bodies held now, between
	// the start of DATA/BDAT and the sink's verdict.
	InFlightBytes atomic.Int64
	// SessionBuffers is the octets sessions hold in their buffers, as
	// each charged them at the end of its last pass: input not taken yet,
	// replies not sent yet, reply arrays (Config.MaxSessionBuffers).
	SessionBuffers atomic.Int64
	// BufferCloses counts sessions closed with 421 4.7.0 because they
	// grew past their share with MaxSessionBuffers spent.
	BufferCloses atomic.Int64
	// TLS and AUTH (tlsstats.go).
	TLS TLSStats
}

func newStats() *Stats {
	return &Stats{MessageSize: hist.New(hist.Exponential(1024, 4, 10)...)}
}

// countCommand records a command's reply class (1..5, from the reply's
// first digit; 0 when the command got no reply of its own yet).
func (st *Stats) countCommand(v codec.Verb, class byte) {
	if int(v) < len(st.Commands) && class < 6 {
		st.Commands[v][class].Add(1)
	}
}

// Refusals returns how many connections were refused for reason r.
func (st *Stats) Refusals(r RefuseReason) int64 { return st.Refused[r].Load() }

// MessagesBy returns how many messages ended with outcome o.
func (st *Stats) MessagesBy(o Outcome) int64 { return st.Messages[o].Load() }

// Reasons for the exporter.
func RefuseReasons() []RefuseReason {
	r := make([]RefuseReason, numRefuseReasons)
	for i := range r {
		r[i] = RefuseReason(i)
	}
	return r
}

// Outcomes for the exporter.
func Outcomes() []Outcome {
	o := make([]Outcome, numOutcomes)
	for i := range o {
		o[i] = Outcome(i)
	}
	return o
}

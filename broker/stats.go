package broker

import (
	"sync/atomic"
	"time"
)

// Stats is a snapshot of the broker's counters, all since New.
type Stats struct {
	Submitted uint64 // taken into the ring by Submit
	Confirmed uint64 // completed with nil: every copy confirmed by RabbitMQ
	Failed    uint64 // taken, then completed with an error

	// What went wrong with publishes (or copies of them). Within the
	// retry window each is followed by another attempt, not a failure.
	Nacked        uint64 // publishes NACKed by the broker
	Returned      uint64 // publishes returned unroutable (basic.return): failed at once
	TimedOut      uint64 // publishes whose confirm did not come within ConfirmTimeout
	Lost          uint64 // publishes unconfirmed when their channel or connection closed
	PublishErrors uint64 // publish calls that failed
	Expired       uint64 // messages failed because their deadline passed before RabbitMQ took them
	NoChannel     uint64 // without a retry window: messages taken while no worker had a channel

	// The deferred path (PublishRetryWindow > 0).
	Deferred    uint64 // times a message was put aside to wait: not publishable now, or its attempt failed
	Retried     uint64 // publishes of a message after a failed attempt
	Republished uint64 // of Retried, those after an attempt that may have been stored: possible duplicates
	// Duplicates: publishes JetStream acknowledged as already stored
	// (Nats-Msg-Id within the stream's duplicate window): republishes
	// stored once. Always 0 for RabbitMQ, which cannot tell.
	Duplicates uint64

	// The spool (Config.SpoolDir).
	Spooled       uint64 // messages written to the spool and answered 250 from there
	Replayed      uint64 // spooled messages confirmed by RabbitMQ and removed from the spool
	SpoolFailed   uint64 // messages the spool could not take (full, disk full, I/O error): kept in memory
	SpoolRejected uint64 // spooled messages AMQP cannot carry, or unroutable for good, moved to the quarantine
	SpoolCorrupt  uint64 // damaged spool records found and quarantined
	SpoolFsyncs   uint64 // fsyncs of the spool (one per group of records)

	// Submit answered at once, without taking the message.
	RejectedBusy     uint64 // more messages held than RingSize/MaxWaiting: ErrBusy
	RejectedDown     uint64 // without a retry window, not connected: ErrUnavailable
	RejectedBlocked  uint64 // without a retry window, connection.blocked in force: ErrUnavailable (also counts messages taken just before)
	RejectedShutdown uint64 // after Close: ErrShuttingDown

	Connects        uint64 // connections established
	ConnectFailures uint64 // connection attempts (dial, handshake or declare) that failed
	Disconnects     uint64 // established connections lost
	ChannelFailures uint64 // worker channels that closed or could not be opened

	// Gauges.
	Ready       bool // connected
	Blocked     bool // connection.blocked in force
	RingLen     int  // messages waiting for a worker
	DeferredLen int  // messages deferred now
	InFlight    int  // messages between Submit and Complete

	Spool          bool          // a spool is configured
	SpoolTaking    bool          // it takes messages now
	SpoolMessages  int64         // messages in the spool, not yet confirmed by RabbitMQ
	SpoolBytes     int64         // their octets on disk
	SpoolDiskBytes int64         // octets of the spool's files, against SpoolMaxBytes
	SpoolOldestAge time.Duration // age of the oldest spooled message waiting; 0 for none
	SpoolOverAge   bool          // SpoolOldestAge is past SpoolMaxAge
}

type counters struct {
	submitted, confirmed, failed                                  atomic.Uint64
	nacked, returned, timedOut, lost, publishErrors, expired      atomic.Uint64
	noChannel                                                     atomic.Uint64
	spooled, replayed, spoolFailed, spoolRejected                 atomic.Uint64
	deferred, retried, republished, duplicates                    atomic.Uint64
	rejectedBusy, rejectedDown, rejectedBlocked, rejectedShutdown atomic.Uint64
	connects, connectFailures, disconnects, channelFailures       atomic.Uint64
}

// Stats returns the current counters.
func (b *Broker) Stats() Stats {
	c := &b.stats
	st := b.state.Load()
	s := Stats{
		Submitted:        c.submitted.Load(),
		Confirmed:        c.confirmed.Load(),
		Failed:           c.failed.Load(),
		Nacked:           c.nacked.Load(),
		Returned:         c.returned.Load(),
		TimedOut:         c.timedOut.Load(),
		Lost:             c.lost.Load(),
		PublishErrors:    c.publishErrors.Load(),
		Expired:          c.expired.Load(),
		NoChannel:        c.noChannel.Load(),
		Deferred:         c.deferred.Load(),
		Retried:          c.retried.Load(),
		Republished:      c.republished.Load(),
		Duplicates:       c.duplicates.Load(),
		RejectedBusy:     c.rejectedBusy.Load(),
		RejectedDown:     c.rejectedDown.Load(),
		RejectedBlocked:  c.rejectedBlocked.Load(),
		RejectedShutdown: c.rejectedShutdown.Load(),
		Connects:         c.connects.Load(),
		ConnectFailures:  c.connectFailures.Load(),
		Disconnects:      c.disconnects.Load(),
		ChannelFailures:  c.channelFailures.Load(),
		Ready:            st&stateReady != 0,
		Blocked:          st&stateBlocked != 0,
		RingLen:          b.ring.len(),
		DeferredLen:      b.deferred.memLen(),
		InFlight:         int(b.pending.Load()),
		Spooled:          c.spooled.Load(),
		Replayed:         c.replayed.Load(),
		SpoolFailed:      c.spoolFailed.Load(),
		SpoolRejected:    c.spoolRejected.Load(),
	}
	if b.spool != nil {
		ss := b.spool.Stats()
		s.Spool, s.SpoolTaking = true, b.spool.Taking()
		s.SpoolMessages, s.SpoolBytes, s.SpoolDiskBytes = ss.Records, ss.Bytes, ss.DiskBytes
		s.SpoolCorrupt, s.SpoolFsyncs = ss.Corrupt, ss.Fsyncs
		if at := b.deferred.oldestSpooled(); at > 0 {
			s.SpoolOldestAge = max(time.Since(time.Unix(0, at)), 0)
			s.SpoolOverAge = s.SpoolOldestAge > b.cfg.SpoolMaxAge
		}
	}
	return s
}

// logEvery is the least time between two log lines of the same kind: a
// broker in trouble fails thousands of messages a second, and one line per
// message would bury the reason.
const logEvery = 5 * time.Second

// limiter lets one log line through per logEvery and counts the rest.
type limiter struct {
	next       atomic.Int64 // broker clock (ns) before which lines are suppressed
	suppressed atomic.Int64
}

// allow reports whether a line may be logged now; when not, it counts it.
func (l *limiter) allow(now int64) bool {
	next := l.next.Load()
	if now < next || !l.next.CompareAndSwap(next, now+int64(logEvery)) {
		l.suppressed.Add(1)
		return false
	}
	return true
}

// suppressedSince returns and resets the count of suppressed lines.
func (l *limiter) suppressedSince() int64 { return l.suppressed.Swap(0) }

// logLimits has one limiter per kind of trouble.
type logLimits struct {
	busy, nack, returned, timeout, lost, publish, channel, connect, expired, spool limiter
}

// Package broker is the broker sink: it forwards every message to an
// AMQP 0-9-1 exchange (RabbitMQ) or a NATS JetStream stream
// (Config.Sink) and completes it only when the broker confirmed it, so
// that the SMTP client gets its 250 only for a message the broker has
// taken responsibility for (persistent, in a durable queue, fsynced for
// quorum queues; stored in a file stream for JetStream). What follows
// describes RabbitMQ; the NATS section at the end says what differs. The
// shared path and the transports are in transport.go.
//
// # Path of a message
//
// Submit runs on an event loop. It pushes the message into a bounded
// lock-free ring (ring.go) and wakes a publisher worker, never
// blocking and never allocating: the first one whose window has room, so
// that under light load one channel carries every publish and the next
// worker joins only when the ones before it are full (Broker.notify).
// Each of Config.Workers workers owns a
// channel in confirm mode with at most Config.Window unconfirmed publishes;
// it publishes with mandatory=true, keeps the publish in a FIFO keyed by
// delivery tag, and completes the message when its confirm comes back.
// The message keeps its body until then, since it may have to be
// published again. A supervisor keeps one connection up (nodes tried in
// turn, capped exponential backoff with jitter, topology re-declared on
// every connect) and follows flow control.
//
// # When RabbitMQ cannot take a message now
//
// Not connected, connection.blocked, basic.nack (a full queue with
// reject-publish, a quorum queue without a leader), the channel or the
// connection lost before the confirm, no confirm within
// Config.ConfirmTimeout, a publish call that failed: the message is
// deferred, not failed (deferred.go). It waits, still held, its client
// still waiting for the reply, and is republished (on the new connection,
// on another worker's channel) with backoff, ahead of newer mail, until
// its deadline: when it was submitted + max(Config.PublishRetryWindow,
// Config.ConfirmTimeout). Each attempt waits for its confirm at most
// ConfirmTimeout and not past the deadline. Only when the deadline passes
// is it answered 451 4.3.0. docs/ARCHITECTURE.md ("When the broker cannot
// take a message now") has the design. PublishRetryWindow 0 turns this
// off: each of these is a 451 at once.
//
// # The spool
//
// With Config.SpoolDir, the deferred queue has a durable backing
// (spool.go, internal/spool): at the moment of deferral the message is
// written to the spool, fsynced in a group with the others of that
// moment, and completed with nil, so that its client gets 250 at once;
// the queue keeps the record's location. The workers publish spooled
// records in the order they were spooled (one worker at a time, with at
// most Window/2 of them in its window, so that live mail keeps the rest),
// with the same backoff and the same message contract, and remove a
// record only after RabbitMQ acked every copy of it; what a process
// leaves is published by the next one. A message the spool cannot take
// (full, disk full, failing) waits in memory as without a spool and is
// answered ErrSpoolFull (451 4.3.1) when its deadline passes. So a 250 is
// RabbitMQ's confirm, or a record fsynced in the spool and then delivered
// at least once.
//
// Bounded throughout: at most max(Config.RingSize +
// Config.Workers×Config.Window, Config.MaxWaiting) messages are held (in
// the ring, unconfirmed, or deferred) and the ring has a cell for each, so Submit answers 451 4.3.2 (sink.ErrBusy) only
// past that; the engine sets MaxWaiting to its connection limit, since a
// session holds one message at a time, so that this never happens. The
// engine counts every body against its in-flight byte budget until
// Complete. No goroutine or timer per message.
//
// # Failures
//
// Answered at once, whatever the window, since another attempt cannot
// succeed:
//
//   - a message AMQP cannot carry (a routing key over 255 octets, a
//     content header larger than the negotiated frame, more distinct
//     domains than Config.MaxDomains): 451 4.3.0 for that message alone,
//     checked for every copy before the first is published; amqp091-go
//     or RabbitMQ would otherwise close the connection. Limits tells the
//     engine the bounds, so that it refuses such envelopes at RCPT;
//   - basic.return (no queue bound for the routing key): ErrUnroutable,
//     451 4.3.5;
//   - more messages held than configured: sink.ErrBusy, 451 4.3.2;
//   - after Close: sink.ErrShuttingDown (421 4.3.2); what Close's context
//     does not leave time for is answered 451 4.3.0.
//
// Every failure is logged (rate-limited) and counted in Stats.
//
// A message is never completed with nil unless RabbitMQ acked every copy
// of it, or it is fsynced in the spool. The reverse is not guaranteed: a message RabbitMQ stored may
// still be answered 451 (its confirm was lost with the connection, or came
// too late), and the client sends it again; and a message whose publish
// may have been stored (lost with its channel or connection, timed out,
// or with other copies acked) is published again within its window, so
// that RabbitMQ may hold it twice (Stats.Republished counts these
// republishes). Consumers must therefore expect duplicates and may drop
// them by message_id.
//
// # Message contract
//
// Every AMQP message published is one SMTP message (or, with a {domain}
// routing key, one copy of it per recipient domain):
//
// Config.Envelope says where the envelope goes: EnvelopeTrace (the
// default) in the body as trace fields, EnvelopeHeaders in the smtp-*
// header table, EnvelopeBoth in both. A header table costs RabbitMQ a
// decode on every publish (1.4-1.6x its CPU per message, bench/factors.md);
// body octets cost it nothing measurable.
//
// Body: msg.Data exactly: with trace fields (Limits asks the engine for
// them, sink.Limits.TraceFields) Return-Path, one X-Original-To per
// recipient and X-Lsmtp-Envelope (internal/sink/trace.go), then lsmtp's
// Received: header, then the message as received (after dot-unstuffing,
// line endings CRLF as on the wire). A copy for one recipient domain of
// several has its own trace fields, naming only its domain's recipients,
// built for its publish call; a message of one domain is published from
// msg.Data as it is. Consumers that store a message where its recipients
// read it remove the fields above the first Received: (they name Bcc
// recipients).
//
// Properties:
//
//	delivery_mode   2 (persistent)
//	content_type    "message/rfc822"
//	message_id      the queue ID; "<queue ID>.<domain>" for a {domain}
//	                copy, as Nats-Msg-Id (copyID)
//	timestamp       when the message was received (seconds, per AMQP)
//	app_id          "lsmtp"
//
// Headers, with EnvelopeHeaders or EnvelopeBoth (EnvelopeTrace publishes
// no header table at all; the AMQP field type in brackets, as a consumer
// library sees it):
//
//	smtp-sender         string   reverse-path without <>; "" for the null sender <>
//	smtp-recipients     array    of strings: forward-paths without <>
//	                             (with {domain}: only that domain's recipients)
//	smtp-client-ip      string   textual IP address of the SMTP client
//	smtp-client-port    int32    TCP source port of the SMTP client
//	smtp-helo           string   the HELO/EHLO argument
//	smtp-declared-size  int64    SIZE= of MAIL FROM (RFC 1870); 0 if none
//	smtp-body           string   BODY= of MAIL FROM: "7BIT", "8BITMIME" (RFC 6152)
//	                             or "BINARYMIME" (RFC 3030)
//	smtp-utf8           bool     SMTPUTF8 was given (RFC 6531)
//	smtp-received-at    string   RFC 3339 UTC with milliseconds,
//	                             e.g. "2024-05-01T12:34:56.789Z"
//	smtp-node           string   the lsmtp node that received it (Config.Node)
//	smtp-tls-version    string   "TLS 1.2", "TLS 1.3"; "" in the clear
//	smtp-tls-cipher     string   the cipher suite (crypto/tls name); "" in the clear
//	smtp-auth-user      string   the user who authenticated (RFC 4954); "" for none
//
// Exchange: declared with Config.ExchangeType, or when that is empty
// "direct" unless a word of the binding key is a topic wildcard ("*",
// "#"), as the default binding of a {domain} key ("inbound.#") has;
// "topic" then. An exchange of another type that exists already is used
// as it is when the type was lsmtp's choice (declare, conn.go). Every
// publish is mandatory: a message no queue is bound for comes back
// (basic.return) and is answered 451 4.3.5, never confirmed unrouted.
//
// Routing: with a static Config.RoutingKey every message is published
// once with that key. A key containing {domain}, e.g. "inbound.{domain}",
// publishes one copy per distinct recipient domain (lower-cased; empty for
// a bare "postmaster"), with {domain} replaced and the trace fields and
// smtp-recipients naming only that domain's recipients. The message is confirmed only when every
// copy is; if any copy fails the whole message is answered 451 (and the
// copies that were stored are delivered again on the client's retry).
//
// # NATS JetStream
//
// With Config.Sink SinkNATS the shared path is the same (ring, windows,
// deferral, spool, expiry, Close); the transport (nats.go) publishes
// asynchronously through one JetStream context per worker, at most
// NATSMaxPending publishes waiting for their PubAck, on one connection
// the supervisor keeps up (nats.go's reconnecting is off). A message is
// completed with nil only when JetStream acknowledged every copy. No
// PubAck within ConfirmTimeout, the connection lost first, no
// responders, a refusal: deferred as a NACK or a lost confirm is; a full
// stream (err_code 10077 "maximum ... exceeded", 10047) is answered
// ErrStorageFull (451 4.3.1) when the deadline passes.
//
// Message: the subject is NATSSubject, or with a trailing ".{domain}"
// one copy per recipient domain (lower-cased; "_" for none); the data is
// the AMQP body exactly. Headers: Nats-Msg-Id always, the queue ID, or
// "<queue ID>.<domain>" for a per-domain copy, so that JetStream stores a
// republished copy once within the stream's duplicate window and never
// takes two copies for one; with EnvelopeHeaders or EnvelopeBoth the
// smtp-* headers above as text (smtp-recipients once per recipient).
package broker

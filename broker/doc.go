// Package broker is the RabbitMQ sink: it forwards every message to an
// AMQP 0-9-1 exchange and completes it only when RabbitMQ confirmed it, so
// that the SMTP client gets its 250 only for a message RabbitMQ has taken
// responsibility for (persistent, in a durable queue, fsynced for quorum
// queues).
//
// # Path of a message
//
// Submit runs on an event loop. It pushes the message into a bounded
// lock-free ring (ring.go) and wakes an idle publisher worker, never
// blocking and never allocating. Each of Config.Workers workers owns a
// channel in confirm mode with at most Config.Window unconfirmed publishes;
// it publishes with mandatory=true, releases the message's bytes as soon as
// the publish call returned (amqp091-go has copied them into its frame
// buffer by then), keeps the publish in a FIFO keyed by delivery tag, and
// completes the message when its confirm comes back. A supervisor keeps one
// connection up (nodes tried in turn, capped exponential backoff with
// jitter, topology re-declared on every connect) and follows flow control.
//
// # Failures
//
// Every failure is a 4xx for the client, logged (rate-limited) and
// counted in Stats:
//
//   - not connected, or connection.blocked in force: Submit answers
//     sink.ErrUnavailable (451 4.3.0) at once (and the workers answer the
//     same for what is still in the ring instead of publishing into a
//     connection RabbitMQ no longer reads);
//   - ring full: sink.ErrBusy (451 4.3.2) at once;
//   - basic.nack, channel or connection closed with the publish
//     unconfirmed, no confirm within Config.ConfirmTimeout, a publish
//     call hanging in a socket write longer than that (the connection is
//     then dropped), a message that waited in the ring longer than that:
//     451 4.3.0;
//   - a message AMQP cannot carry (a routing key over 255 octets, a
//     content header larger than the negotiated frame, more distinct
//     domains than Config.MaxDomains): 451 4.3.0 for that message alone,
//     checked for every copy before the first is published; amqp091-go
//     or RabbitMQ would otherwise close the connection. Limits tells the
//     engine the bounds, so that it refuses such envelopes at RCPT;
//   - basic.return (no queue bound for the routing key): ErrUnroutable,
//     451 4.3.5;
//   - after Close: sink.ErrShuttingDown (421 4.3.2).
//
// A message is never completed with nil unless RabbitMQ acked every copy
// of it. The reverse is not guaranteed: a message RabbitMQ stored may
// still be answered 451 (its confirm was lost with the connection, or came
// too late), and the client sends it again. Consumers must therefore
// expect duplicates and may drop them by message_id.
//
// # Message contract
//
// Every AMQP message published is one SMTP message (or, with a {domain}
// routing key, one copy of it per recipient domain):
//
// Body: msg.Data exactly: lsmtp's Received: header followed by the message
// as received (after dot-unstuffing, line endings CRLF as on the wire).
//
// Properties:
//
//	delivery_mode   2 (persistent)
//	content_type    "message/rfc822"
//	message_id      the queue ID (shared by the copies of one message)
//	timestamp       when the message was received (seconds, per AMQP)
//	app_id          "lsmtp"
//
// Headers (the AMQP field type in brackets, as a consumer library sees it):
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
// Routing: with a static Config.RoutingKey every message is published
// once with that key. A key containing {domain}, e.g. "inbound.{domain}",
// publishes one copy per distinct recipient domain (lower-cased; empty for
// a bare "postmaster"), with {domain} replaced and smtp-recipients holding
// only that domain's recipients. The message is confirmed only when every
// copy is; if any copy fails the whole message is answered 451 (and the
// copies that were stored are delivered again on the client's retry).
package broker

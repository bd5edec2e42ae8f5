// Package chaos checks lsmtp's promise under faults: a 250 means
// RabbitMQ has the message, whatever happens around it.
//
// Run builds and starts the real lsmtp binary with its broker connection
// going through a TCP fault proxy (internal/faultproxy), puts it under
// sustained SMTP load from concurrent sessions that record the queue ID of
// every 250, and meanwhile injects, in turn:
//
//   - cut: the proxy drops every broker connection and refuses new ones
//     for a moment (a network partition between lsmtp and RabbitMQ);
//   - rabbit-restart: `rabbitmqctl stop_app`, a pause, `start_app`, then
//     a wait until RabbitMQ accepts AMQP connections again;
//   - lsmtp-restart: SIGTERM to lsmtp (a graceful drain), then a fresh
//     process on the same port.
//
// At the end it consumes the whole queue and matches it against the
// acknowledged queue IDs: a lost message (a 250 not in the queue) fails
// the run; duplicates (a message stored although answered 4xx, then sent
// again by its client) and tempfails are reported, as the message
// contract allows them.
//
// RabbitMQ is always restarted (start_app) before Run returns, also when
// it fails or its context is cancelled: stop_app affects every other
// user of the broker.
package chaos

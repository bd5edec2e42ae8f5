// Package e2e tests lsmtp end to end: the engine runs in-process with the
// RabbitMQ sink (package broker) in front of the real RabbitMQ at
// 127.0.0.1:5672, clients speak SMTP over TCP, and every test reads back
// with a plain AMQP consumer what reached its own queue, comparing it byte
// for byte with what the client meant to send. The NATS tests
// (nats_test.go) do the same with the JetStream sink against the real
// nats-server at 127.0.0.1:4222, reading back their own stream.
//
// The package has tests only; this file exists to document it.
package e2e

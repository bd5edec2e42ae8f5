package main

import (
	"flag"
	"log/slog"
	"os"

	"github.com/lsmtp/lsmtp/broker"
)

// amqpOptions are the RabbitMQ sink's flags, defined by the broker package.
type amqpOptions struct{ cfg broker.Config }

func (a *amqpOptions) register(fs *flag.FlagSet) {
	a.cfg = broker.DefaultConfig()
	a.cfg.RegisterFlags(fs)
}

// open starts the broker sink. It does not wait for RabbitMQ: with the
// broker down the server still starts and answers DATA with 451 until a
// connection is up.
func (a *amqpOptions) open(hostname string, log *slog.Logger) (*broker.Broker, error) {
	a.cfg.ApplyEnv(os.Getenv)
	if a.cfg.Node == "" {
		a.cfg.Node = hostname
	}
	a.cfg.Logger = log
	return broker.New(a.cfg)
}

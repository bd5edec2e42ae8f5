package main

import (
	"flag"
	"log/slog"
	"time"

	"github.com/lsmtp/lsmtp/broker"
)

// amqpOptions are the RabbitMQ sink's flags, defined by the broker package,
// plus the few this command adds when the broker does not define them.
type amqpOptions struct{ cfg broker.Config }

func (a *amqpOptions) register(fs *flag.FlagSet) {
	a.cfg = broker.DefaultConfig()
	a.cfg.RegisterFlags(fs)
	// --declare=false is the documented spelling; --no-declare stays.
	if fs.Lookup("declare") == nil {
		fs.BoolVar(&a.cfg.Declare, "declare", a.cfg.Declare, "declare exchange, queue and binding on connect; false when the topology is managed elsewhere")
	}
	// Connection tuning the broker package has no flags for.
	durations := []struct {
		name  string
		v     *time.Duration
		usage string
	}{
		{"amqp-dial-timeout", &a.cfg.DialTimeout, "bound on TCP connect plus the AMQP handshake"},
		{"amqp-heartbeat", &a.cfg.Heartbeat, "AMQP heartbeat interval"},
		{"amqp-reconnect-min", &a.cfg.ReconnectMin, "first wait before reconnecting to RabbitMQ (doubles, with jitter)"},
		{"amqp-reconnect-max", &a.cfg.ReconnectMax, "longest wait between reconnect attempts"},
	}
	for _, d := range durations {
		if fs.Lookup(d.name) == nil {
			fs.DurationVar(d.v, d.name, *d.v, d.usage)
		}
	}
	// The credentials have variables of their own (LSMTP_AMQP_USERNAME,
	// LSMTP_AMQP_PASSWORD) so that URLs, which show up in process
	// listings, need carry none. As keys they fit the configuration file.
	if fs.Lookup("amqp-username") == nil {
		fs.StringVar(&a.cfg.Username, "amqp-username", a.cfg.Username, "user for every AMQP URL, replacing the URLs' own (better in the file or $"+broker.EnvUsername+")")
	}
	if fs.Lookup(keyAMQPPassword) == nil {
		fs.StringVar(&a.cfg.Password, keyAMQPPassword, a.cfg.Password, "password for amqp-username (better in the file or $"+broker.EnvPassword+" than on the command line)")
	}
}

// open starts the broker sink. It does not wait for RabbitMQ: with the
// broker down the server still starts and answers DATA with 451 until a
// connection is up. Variables were applied with the flags (config.go), so
// broker.Config.ApplyEnv is not called: it would let a variable win over
// a flag.
func (a *amqpOptions) open(hostname string, log *slog.Logger) (*broker.Broker, error) {
	cfg := a.cfg
	if cfg.Node == "" {
		cfg.Node = hostname
	}
	cfg.Logger = log
	return broker.New(cfg)
}

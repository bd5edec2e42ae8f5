package chaos

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// RabbitApp controls the local RabbitMQ node's application
// (rabbitmqctl stop_app / start_app) and makes sure it runs again after a
// stop, whatever happens to the caller: chaos runs and the e2e outage
// test share it.
type RabbitApp struct {
	url string // AMQP URL, straight to the broker

	mu      sync.Mutex
	stopped bool // stop_app was run and start_app has not succeeded since
}

// rabbitctl runs rabbitmqctl with args, bounded in time: the restore must
// work even after the run's context ended.
func rabbitctl(args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NewRabbitApp controls the node whose AMQP listener url reaches.
func NewRabbitApp(url string) *RabbitApp { return &RabbitApp{url: url} }

// StoppedRabbitApp is NewRabbitApp for a node found not answering, so
// that Restore starts its application whoever stopped it.
func StoppedRabbitApp(url string) *RabbitApp { return &RabbitApp{url: url, stopped: true} }

// StopApp stops the RabbitMQ application (the Erlang node stays up).
// Restore is owed from the moment it is called, even if rabbitmqctl
// fails: the stop may have happened all the same.
func (r *RabbitApp) StopApp() error {
	r.mu.Lock()
	r.stopped = true // from here on, restore must start it
	r.mu.Unlock()
	return rabbitctl("stop_app")
}

// Restore starts the application if StopApp was called since the last
// successful Restore, and waits until AMQP connections are accepted. If
// start_app fails (the node itself is gone) it starts the server. It is
// safe to call any number of times, from any goroutine.
func (r *RabbitApp) Restore(within time.Duration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.stopped {
		return nil
	}
	err := rabbitctl("start_app")
	if err != nil {
		if err2 := exec.Command("rabbitmq-server", "-detached").Run(); err2 != nil {
			return fmt.Errorf("%v; rabbitmq-server -detached: %v", err, err2)
		}
	}
	if err := WaitAMQP(r.url, within); err != nil {
		return err
	}
	r.stopped = false
	return nil
}

// WaitAMQP waits until the broker at url accepts a connection and a
// channel.
func WaitAMQP(url string, within time.Duration) error {
	deadline := time.Now().Add(within)
	var last error
	for time.Now().Before(deadline) {
		conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err == nil {
			ch, err2 := conn.Channel()
			if err2 == nil {
				ch.Close()
				conn.Close()
				return nil
			}
			conn.Close()
			err = err2
		}
		last = err
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("RabbitMQ not accepting AMQP connections within %s: %v", within, last)
}

// queueExists reports whether queue exists (a passive declare on its own
// channel, which a 404 closes).
func queueExists(url, queue string) (bool, error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		return false, err
	}
	_, err = ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	var aerr *amqp.Error
	if errors.As(err, &aerr) && aerr.Code == amqp.NotFound {
		return false, nil
	}
	return err == nil, err
}

// deleteTopology deletes the run's queue and exchange.
func deleteTopology(url, name string) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	defer conn.Close()
	var errs []error
	if ch, err := conn.Channel(); err == nil {
		if _, err := ch.QueueDelete(name, false, false, false); err != nil {
			errs = append(errs, fmt.Errorf("delete queue %s: %w", name, err))
		}
		ch.Close()
	}
	if ch, err := conn.Channel(); err == nil {
		if err := ch.ExchangeDelete(name, false, false); err != nil {
			errs = append(errs, fmt.Errorf("delete exchange %s: %w", name, err))
		}
		ch.Close()
	}
	return errors.Join(errs...)
}

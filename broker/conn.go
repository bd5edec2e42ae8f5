package broker

import (
	"math/rand/v2"
	"time"
)

// connection is one established connection shared by the workers, each
// of which opens its own publisher on it.
type connection struct {
	link   link
	closed chan struct{} // closed once the connection is gone
	url    string        // redacted, for logs
}

// supervise keeps a connection up until Close: dial the URLs in turn with
// capped exponential backoff and full jitter, declare the topology, then
// watch the connection for close, flow control and stuck writes. It is
// the same for every transport.
func (b *Broker) supervise() {
	defer close(b.supDone)
	backoff := b.cfg.ReconnectMin
	// wait sleeps a random time in [0, backoff) ("full jitter", which keeps
	// a fleet of nodes from reconnecting in lock step after a broker
	// restart) and doubles backoff up to ReconnectMax. It reports false
	// when Close interrupted it.
	wait := func() bool {
		d := time.Duration(rand.Int64N(int64(backoff))) + time.Millisecond
		backoff = min(backoff*2, b.cfg.ReconnectMax)
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return true
		case <-b.stopSup:
			return false
		}
	}
	everConnected, downLogged := false, false
	for i := 0; ; {
		select {
		case <-b.stopSup:
			return
		default:
		}
		urls := b.tr.urls()
		url := urls[i%len(urls)]
		c, err := b.dial(url)
		if err != nil {
			b.stats.connectFailures.Add(1)
			switch {
			case !everConnected && !downLogged && b.spool != nil:
				b.log.Error(b.tr.kind()+" not reachable: messages are spooled and answered 250, and published once connected; retrying in the background",
					"url", b.tr.redact(url), "err", err, "spool", b.cfg.SpoolDir)
				downLogged = true
			case !everConnected && !downLogged:
				// The one line an operator needs when starting against a
				// broker that is not there yet.
				b.log.Error(b.tr.kind()+" not reachable: messages wait up to the publish retry window, then get 451, until connected; retrying in the background",
					"url", b.tr.redact(url), "err", err, "window", b.cfg.PublishRetryWindow)
				downLogged = true
			case b.limits.connect.allow(b.now()):
				b.log.Warn(b.tr.kind()+" connect failed, retrying", "url", b.tr.redact(url), "err", err,
					"suppressed", b.limits.connect.suppressedSince())
			}
			i++ // the next node of the cluster
			if !wait() {
				return
			}
			continue
		}
		everConnected = true
		b.stats.connects.Add(1)
		b.log.Info("connected to "+b.tr.kind(), "url", c.url)
		connectedAt := time.Now()
		if b.watch(c) {
			return
		}
		// After a loss, try the node that worked first, at once if the
		// connection had lived a while; a connection that keeps dying
		// right after it opened is retried with growing backoff instead
		// of in a tight loop.
		if time.Since(connectedAt) >= b.cfg.ReconnectMax {
			backoff = b.cfg.ReconnectMin
		} else if !wait() {
			return
		}
	}
}

// dial connects to url through the transport.
func (b *Broker) dial(url string) (*connection, error) {
	l, err := b.tr.dial(url)
	if err != nil {
		return nil, err
	}
	return &connection{link: l, closed: make(chan struct{}), url: b.tr.redact(url)}, nil
}

// watch publishes c to the workers and follows it until it is lost
// (false) or Close stops the supervisor (true).
func (b *Broker) watch(c *connection) (stopped bool) {
	b.setConn(c)
	defer func() {
		close(c.closed)
		b.setConn(nil)
	}()
	return c.link.watch(b, b.stopSup)
}

// watchdogInterval is how often a link's watch calls watchdog.
func (b *Broker) watchdogInterval() time.Duration { return min(b.cfg.ConfirmTimeout/4, time.Second) }

// watchdog looks for publish calls hanging in a socket write (a broker
// that stopped reading): no confirm timeout can fire while the worker is
// stuck there, so the socket is closed under it.
func (b *Broker) watchdog(c link, url string) {
	now := b.now()
	for _, w := range b.workers {
		if since := w.publishingSince.Load(); since != 0 && now-since > int64(b.cfg.ConfirmTimeout) {
			b.log.Error("publish hung in a socket write longer than the confirm timeout, dropping the connection",
				"url", url, "worker", w.id, "timeout", b.cfg.ConfirmTimeout)
			c.kill()
			return
		}
	}
}

// Package metrics exports lsmtp's counters in the Prometheus format.
//
// The engine and the broker count with plain atomics on their hot paths
// (engine.Stats, broker.Stats, internal/hist); nothing there builds labels
// or touches client_golang. Collector reads those atomics when Prometheus
// scrapes and turns them into const metrics, so the cost of metrics is paid
// per scrape, not per message or per command.
package metrics

import (
	"net/http"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lsmtp/lsmtp/broker"
	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/engine"
	"github.com/lsmtp/lsmtp/internal/hist"
)

// Namespace prefixes every metric name.
const Namespace = "lsmtp"

// BrokerStats is what the collector needs from the broker; *broker.Broker
// has it.
type BrokerStats interface {
	Stats() broker.Stats
}

// confirmLatency is offered by a broker that measures publish-to-confirm
// latency (seconds); the collector exports it when present.
type confirmLatency interface {
	ConfirmLatency() *hist.Histogram
}

// tracker is the client policy's count of tracked addresses
// (*policy.Policy has it).
type tracker interface{ Tracked() int }

// Sources are the counters a Collector reads.
type Sources struct {
	// Engine is the SMTP server's live counters (engine.Server.Stats).
	Engine *engine.Stats
	// Config, when set, returns the configuration in force, for the limit
	// gauges (engine.Server.Config; it changes on reload).
	Config func() engine.Config
	// Broker, when set, is the broker sink (RabbitMQ or NATS JetStream).
	// nil with the null sink.
	Broker BrokerStats
}

// Collector is a prometheus.Collector reading engine and broker counters
// at scrape time.
type Collector struct {
	src     Sources
	latency *hist.Histogram // broker confirm latency, if the broker measures it

	build *prometheus.Desc

	connOpen, connAccepted, connRefused, connLimit *prometheus.Desc
	commands, messages, bytesRecv, msgSize         *prometheus.Desc
	inFlight, inFlightLimit, trackedClients        *prometheus.Desc
	sessionBuffers, sessionBuffersLimit, bufCloses *prometheus.Desc
	tls                                            tlsDescs // tls.go

	brkConnected, brkBlocked                            *prometheus.Desc
	brkConnects, brkReconnects, brkConnectFailures      *prometheus.Desc
	brkDisconnects, brkChannelFailures                  *prometheus.Desc
	brkSubmitted, brkConfirmed, brkFailed               *prometheus.Desc
	brkPublishFailures, brkRejected                     *prometheus.Desc
	brkRing, brkPending, brkAwaitingConfirm, brkLatency *prometheus.Desc
	brkDeferred, brkRetried, brkRepublished, brkWaiting *prometheus.Desc
	brkDuplicates                                       *prometheus.Desc

	spoolMessages, spoolBytes, spoolDiskBytes, spoolOldest, spoolOverAge, spoolTaking *prometheus.Desc
	spooled, spoolReplayed, spoolFailed, spoolCorrupt, spoolRejected, spoolFsyncs     *prometheus.Desc

	version, goVersion string
}

// classLabels name a reply's class by its first digit; "none" is a
// command whose reply comes later (a BDAT LAST waiting for the broker).
var classLabels = [6]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

// NewCollector returns a collector over src.
func NewCollector(src Sources) *Collector {
	name := func(n string) string { return prometheus.BuildFQName(Namespace, "", n) }
	desc := func(n, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name(n), help, labels, nil)
	}
	c := &Collector{src: src}
	if cl, ok := src.Broker.(confirmLatency); ok {
		c.latency = cl.ConfirmLatency()
	}
	c.version, c.goVersion = "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		c.version, c.goVersion = bi.Main.Version, bi.GoVersion
	}
	c.build = desc("build_info", "Always 1; the labels name the build.", "version", "go_version")

	c.connOpen = desc("connections_open", "SMTP connections open now.")
	c.connAccepted = desc("connections_accepted_total", "SMTP connections accepted.")
	c.connRefused = desc("connections_refused_total", "SMTP connections refused at accept, by reason.", "reason")
	c.connLimit = desc("connections_limit", "max-conns in force; 0 is no limit.")
	c.commands = desc("commands_total", "SMTP commands by verb and by the class of their reply.", "verb", "class")
	c.messages = desc("messages_total", "Messages whose body arrived, by result (accepted, tempfail, reject) and reason.", "result", "reason")
	c.bytesRecv = desc("received_bytes_total", "Octets read from SMTP clients.")
	c.msgSize = desc("message_size_bytes", "Size of accepted messages, octets.")
	c.inFlight = desc("in_flight_bytes", "Message octets held now, from DATA/BDAT until the broker's verdict.")
	c.inFlightLimit = desc("in_flight_bytes_limit", "max-in-flight-bytes in force; past it messages get 451 4.3.1.")
	c.sessionBuffers = desc("session_buffer_bytes", "Octets sessions hold in their buffers (input not taken, replies not sent), as charged at the end of each session's last read.")
	c.sessionBuffersLimit = desc("session_buffer_bytes_limit", "max-session-buffers in force; past it sessions over their share take no commands, or get 421 4.7.0 if they still grow.")
	c.bufCloses = desc("session_buffer_closes_total", "Sessions closed with 421 4.7.0 for growing past their share with max-session-buffers spent.")
	c.tls.init(desc)
	c.trackedClients = desc("policy_tracked_clients", "Client IPs with rate-limit state (at most max-tracked-clients); absent without client controls.")

	if src.Broker != nil {
		c.brkConnected = desc("broker_connected", "1 while connected to the broker (RabbitMQ or NATS).")
		c.brkBlocked = desc("broker_blocked", "1 while RabbitMQ blocks publishing (connection.blocked, a resource alarm).")
		c.brkConnects = desc("broker_connects_total", "Connections to the broker established.")
		c.brkReconnects = desc("broker_reconnects_total", "Connections to the broker established after the first.")
		c.brkConnectFailures = desc("broker_connect_failures_total", "Connection attempts (dial, handshake, declare) that failed.")
		c.brkDisconnects = desc("broker_disconnects_total", "Established connections to the broker lost.")
		c.brkChannelFailures = desc("broker_channel_failures_total", "Publisher channels that closed or could not be opened.")
		c.brkSubmitted = desc("broker_submitted_total", "Messages taken into the publish ring.")
		c.brkConfirmed = desc("broker_confirmed_total", "Messages confirmed by the broker (every copy: RabbitMQ confirm or JetStream PubAck).")
		c.brkFailed = desc("broker_failed_total", "Messages taken, then failed (the client got 4xx).")
		c.brkPublishFailures = desc("broker_publish_failures_total", "Publishes (copies of messages) that failed, by reason.", "reason")
		c.brkRejected = desc("broker_rejected_total", "Messages refused at once without being taken, by reason.", "reason")
		c.brkRing = desc("broker_ring_depth", "Messages in the ring waiting for a publisher worker.")
		c.brkPending = desc("broker_pending_messages", "Messages between hand-off and verdict (ring, publishing or awaiting confirm).")
		c.brkAwaitingConfirm = desc("broker_awaiting_confirm_messages", "Messages taken by a worker and not yet completed: published and waiting for the confirm.")
		c.brkDeferred = desc("broker_deferred_total", "Times a message was put aside to be published again (not publishable now, or its attempt failed).")
		c.brkRetried = desc("broker_retried_total", "Publishes of a message after a failed attempt.")
		c.brkRepublished = desc("broker_republished_total", "Of the retried publishes, those after an attempt the broker may have stored: possible duplicates (JetStream stores them once).")
		c.brkDuplicates = desc("broker_duplicates_total", "Publishes JetStream acknowledged as duplicates (Nats-Msg-Id within the duplicate window): republishes stored once. 0 for RabbitMQ.")
		c.brkWaiting = desc("broker_deferred_messages", "Messages waiting now to be published again, their clients still waiting for the reply.")
		c.spoolMessages = desc("spool_messages", "Messages in the durable spool, answered 250 and not yet confirmed by the broker; absent without a spool.")
		c.spoolBytes = desc("spool_bytes", "Octets of the messages in the spool.")
		c.spoolDiskBytes = desc("spool_disk_bytes", "Octets of the spool's files, against spool-max-bytes.")
		c.spoolOldest = desc("spool_oldest_age_seconds", "Age of the oldest message waiting in the spool; 0 for none.")
		c.spoolOverAge = desc("spool_over_max_age", "1 while the oldest spooled message is older than spool-max-age (kept, never dropped).")
		c.spoolTaking = desc("spool_taking", "1 while the spool takes messages (not full, its last write succeeded).")
		c.spooled = desc("spooled_total", "Messages written to the spool and answered 250 from there.")
		c.spoolReplayed = desc("spool_replayed_total", "Spooled messages confirmed by the broker and removed from the spool: the replay rate.")
		c.spoolFailed = desc("spool_failed_total", "Messages the spool could not take (full, disk full, I/O error); they wait in memory, then 451 4.3.1.")
		c.spoolCorrupt = desc("spool_corrupt_records_total", "Damaged spool records found (torn by a crash, changed on disk) and moved to the quarantine.")
		c.spoolRejected = desc("spool_rejected_total", "Spooled messages moved to the quarantine because AMQP cannot carry them or a copy stayed unroutable (30 attempts over at least a minute).")
		c.spoolFsyncs = desc("spool_fsyncs_total", "fsyncs of the spool, one per group of messages.")
		if c.latency != nil {
			c.brkLatency = desc("broker_confirm_latency_seconds", "Time from publish to the broker's confirm (RabbitMQ confirm, JetStream PubAck).")
		}
	}
	return c
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.build, c.connOpen, c.connAccepted, c.connRefused, c.connLimit, c.commands, c.messages,
		c.bytesRecv, c.msgSize, c.inFlight, c.inFlightLimit, c.trackedClients,
		c.sessionBuffers, c.sessionBuffersLimit, c.bufCloses,
		c.brkConnected, c.brkBlocked, c.brkConnects, c.brkReconnects, c.brkConnectFailures,
		c.brkDisconnects, c.brkChannelFailures, c.brkSubmitted, c.brkConfirmed, c.brkFailed,
		c.brkPublishFailures, c.brkRejected, c.brkRing, c.brkPending, c.brkAwaitingConfirm, c.brkLatency,
		c.brkDeferred, c.brkRetried, c.brkRepublished, c.brkWaiting, c.brkDuplicates,
		c.spoolMessages, c.spoolBytes, c.spoolDiskBytes, c.spoolOldest, c.spoolOverAge, c.spoolTaking,
		c.spooled, c.spoolReplayed, c.spoolFailed, c.spoolCorrupt, c.spoolRejected, c.spoolFsyncs,
	} {
		if d != nil {
			ch <- d
		}
	}
	c.tls.describe(ch)
}

// Collect reads the counters. It runs on the scraping goroutine only.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.build, 1, c.version, c.goVersion)

	if st := c.src.Engine; st != nil {
		gauge(c.connOpen, float64(st.Open.Load()))
		counter(c.connAccepted, float64(st.Accepted.Load()))
		for _, r := range engine.RefuseReasons() {
			counter(c.connRefused, float64(st.Refusals(r)), r.String())
		}
		// Verb by class is a sparse matrix: a series appears once it
		// counted something, as with a CounterVec.
		for v := range st.Commands {
			for class := range st.Commands[v] {
				if n := st.Commands[v][class].Load(); n > 0 {
					counter(c.commands, float64(n), codec.Verb(v).String(), classLabels[class])
				}
			}
		}
		for _, o := range engine.Outcomes() {
			counter(c.messages, float64(st.MessagesBy(o)), result(o), o.String())
		}
		counter(c.bytesRecv, float64(st.BytesRecv.Load()))
		if st.MessageSize != nil {
			ch <- constHistogram(c.msgSize, st.MessageSize.Snapshot())
		}
		gauge(c.inFlight, float64(st.InFlightBytes.Load()))
		gauge(c.sessionBuffers, float64(st.SessionBuffers.Load()))
		counter(c.bufCloses, float64(st.BufferCloses.Load()))
		c.tls.collect(st, counter, gauge)
	}
	if c.src.Config != nil {
		cfg := c.src.Config()
		gauge(c.connLimit, float64(cfg.MaxConns))
		gauge(c.inFlightLimit, float64(cfg.MaxInFlightBytes))
		gauge(c.sessionBuffersLimit, float64(cfg.MaxSessionBuffers))
		if p, ok := cfg.Policy.(tracker); ok {
			gauge(c.trackedClients, float64(p.Tracked()))
		}
	}

	if c.src.Broker == nil {
		return
	}
	b := c.src.Broker.Stats()
	gauge(c.brkConnected, boolf(b.Ready))
	gauge(c.brkBlocked, boolf(b.Blocked))
	counter(c.brkConnects, float64(b.Connects))
	counter(c.brkReconnects, float64(max(b.Connects, 1)-1))
	counter(c.brkConnectFailures, float64(b.ConnectFailures))
	counter(c.brkDisconnects, float64(b.Disconnects))
	counter(c.brkChannelFailures, float64(b.ChannelFailures))
	counter(c.brkSubmitted, float64(b.Submitted))
	counter(c.brkConfirmed, float64(b.Confirmed))
	counter(c.brkFailed, float64(b.Failed))
	for _, f := range []struct {
		reason string
		n      uint64
	}{
		{"nack", b.Nacked}, {"returned", b.Returned}, {"timeout", b.TimedOut}, {"lost", b.Lost},
		{"publish_error", b.PublishErrors}, {"expired", b.Expired}, {"no_channel", b.NoChannel},
	} {
		counter(c.brkPublishFailures, float64(f.n), f.reason)
	}
	for _, r := range []struct {
		reason string
		n      uint64
	}{
		{"busy", b.RejectedBusy}, {"down", b.RejectedDown}, {"blocked", b.RejectedBlocked}, {"shutdown", b.RejectedShutdown},
	} {
		counter(c.brkRejected, float64(r.n), r.reason)
	}
	gauge(c.brkRing, float64(b.RingLen))
	counter(c.brkDeferred, float64(b.Deferred))
	counter(c.brkRetried, float64(b.Retried))
	counter(c.brkRepublished, float64(b.Republished))
	counter(c.brkDuplicates, float64(b.Duplicates))
	gauge(c.brkWaiting, float64(b.DeferredLen))
	gauge(c.brkPending, float64(b.InFlight))
	// Ring and pending are read one after the other, not together; the
	// difference is clamped rather than shown negative.
	gauge(c.brkAwaitingConfirm, float64(max(b.InFlight-b.RingLen, 0)))
	if b.Spool {
		gauge(c.spoolMessages, float64(b.SpoolMessages))
		gauge(c.spoolBytes, float64(b.SpoolBytes))
		gauge(c.spoolDiskBytes, float64(b.SpoolDiskBytes))
		gauge(c.spoolOldest, b.SpoolOldestAge.Seconds())
		gauge(c.spoolOverAge, boolf(b.SpoolOverAge))
		gauge(c.spoolTaking, boolf(b.SpoolTaking))
		counter(c.spooled, float64(b.Spooled))
		counter(c.spoolReplayed, float64(b.Replayed))
		counter(c.spoolFailed, float64(b.SpoolFailed))
		counter(c.spoolCorrupt, float64(b.SpoolCorrupt))
		counter(c.spoolRejected, float64(b.SpoolRejected))
		counter(c.spoolFsyncs, float64(b.SpoolFsyncs))
	}
	if c.latency != nil {
		ch <- constHistogram(c.brkLatency, c.latency.Snapshot())
	}
}

// result groups outcomes the way an operator reads them: delivered,
// told to retry (4xx), refused for good (5xx).
func result(o engine.Outcome) string {
	switch {
	case o == engine.OutcomeAccepted:
		return "accepted"
	case o.Temporary():
		return "tempfail"
	}
	return "reject"
}

func boolf(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func constHistogram(d *prometheus.Desc, s hist.Snapshot) prometheus.Metric {
	buckets := make(map[float64]uint64, len(s.Bounds))
	for i, b := range s.Bounds {
		buckets[b] = s.Cumulative[i]
	}
	return prometheus.MustNewConstHistogram(d, s.Count, s.Sum, buckets)
}

// NewRegistry returns a registry with c and the Go runtime and process
// collectors (memory, goroutines, GC, open file descriptors).
func NewRegistry(c *Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves reg in the Prometheus text format (or OpenMetrics when
// the scraper asks for it).
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
		EnableOpenMetrics:   true,
	})
}

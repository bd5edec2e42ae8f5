package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/broker"
)

// Envelope encodings a factor row publishes.
const (
	EnvNone       = ""        // no envelope at all (the bridge's shape)
	EnvTinyHeader = "tiny"    // one small header: any header table at all
	EnvJSONHeader = "json"    // one header holding the envelope as JSON
	EnvHeaders    = "headers" // the contract's ten smtp-* headers
	EnvTrace      = "trace"   // trace fields prepended to the body, no headers
)

// Exchange kinds a factor row publishes to.
const (
	ExDefault = ""       // the default exchange, routing key = queue name
	ExDirect  = "direct" // a direct exchange, the queue bound with the key
	ExTopic   = "topic"  // a topic exchange, the queue bound with the key
)

// FactorShape is one way of publishing the same mail: one row of the
// factor table.
type FactorShape struct {
	ID    string
	Label string

	Exchange    string // ExDefault, ExDirect, ExTopic
	Props       bool   // message_id, timestamp, app_id
	Envelope    string // EnvNone, ...
	Mandatory   bool
	AltExchange bool // the exchange has an alternate-exchange (a fanout to an "unroutable" queue)
	Channels    int  // publishing channels; the in-flight window is split over them
	ConnPerChan bool // one connection per channel instead of one shared
	QueueV2     bool // classic queues only: x-queue-version 2
}

// FactorShapes are the factor table's rows, in the order they are run and
// shown: first one factor at a time from the bridge's shape, then the
// combinations lsmtp could use, then parallelism.
func FactorShapes() []FactorShape {
	p := func(id, label string, f FactorShape) FactorShape {
		f.ID, f.Label = id, label
		f.Channels = max(f.Channels, 1)
		return f
	}
	today := FactorShape{Exchange: ExTopic, Props: true, Envelope: EnvHeaders, Mandatory: true}
	cand := FactorShape{Exchange: ExDirect, Props: true, Envelope: EnvTrace, Mandatory: true}
	candAE := FactorShape{Exchange: ExDirect, Props: true, Envelope: EnvTrace, AltExchange: true}
	par := func(base FactorShape, id, what string) []FactorShape {
		var out []FactorShape
		for _, v := range []struct {
			n    int
			conn bool
		}{{2, false}, {4, false}, {2, true}, {4, true}} {
			f := base
			f.Channels, f.ConnPerChan = v.n, v.conn
			how := fmt.Sprintf("%d channels, one connection", v.n)
			sfx := fmt.Sprintf("ch%d", v.n)
			if v.conn {
				how = fmt.Sprintf("%d channels, a connection each", v.n)
				sfx = fmt.Sprintf("conn%d", v.n)
			}
			out = append(out, p(id+"-"+sfx, what+", "+how, f))
		}
		return out
	}
	rows := []FactorShape{
		p("bare", "default exchange, no headers (the bridge's shape)", FactorShape{}),
		p("props", "+ message_id, timestamp, app_id properties", FactorShape{Props: true}),
		p("tiny-header", "+ props + one 1-byte header (any header table)", FactorShape{Props: true, Envelope: EnvTinyHeader}),
		p("json-header", "+ props + one header, the envelope as JSON", FactorShape{Props: true, Envelope: EnvJSONHeader}),
		p("headers", "+ props + our ten smtp-* headers", FactorShape{Props: true, Envelope: EnvHeaders}),
		p("trace", "+ props + envelope as trace fields in the body, no headers", FactorShape{Props: true, Envelope: EnvTrace}),
		p("direct", "props, direct exchange", FactorShape{Props: true, Exchange: ExDirect}),
		p("topic", "props, topic exchange", FactorShape{Props: true, Exchange: ExTopic}),
		p("mandatory", "props, default exchange, mandatory", FactorShape{Props: true, Mandatory: true}),
		p("direct-mandatory", "props, direct, mandatory", FactorShape{Props: true, Exchange: ExDirect, Mandatory: true}),
		p("direct-ae", "props, direct with alternate exchange", FactorShape{Props: true, Exchange: ExDirect, AltExchange: true}),
		p("topic-mandatory", "props, topic, mandatory", FactorShape{Props: true, Exchange: ExTopic, Mandatory: true}),
		p("topic-ae", "props, topic with alternate exchange", FactorShape{Props: true, Exchange: ExTopic, AltExchange: true}),
		p("today", "lsmtp today: ten headers, topic, mandatory", today),
		p("trace-direct-mandatory", "trace fields, direct, mandatory", cand),
		p("trace-direct-ae", "trace fields, direct with alternate exchange", candAE),
		p("trace-direct-mandatory-cqv2", "trace fields, direct, mandatory, classic queue v2", FactorShape{Exchange: ExDirect, Props: true, Envelope: EnvTrace, Mandatory: true, QueueV2: true}),
	}
	rows = append(rows, par(today, "today", "lsmtp today")...)
	rows = append(rows, par(cand, "trace-direct-mandatory", "trace, direct, mandatory")...)
	return rows
}

// FactorConfig configures a factor table run.
type FactorConfig struct {
	AMQPURL    string
	QueueTypes []string // broker.QueueClassic, broker.QueueQuorum
	Messages   int      // per row and run
	Runs       int      // rounds over all rows; rows alternate within a round
	Size       int      // body octets before any trace fields
	Window     int      // unconfirmed publishes in all, split over a row's channels
	Rcpts      int      // recipients of the envelope
	Rows       string   // regexp on row IDs; "" runs all
	Title      string   // the section's heading; "" for the factor table's
	Progress   io.Writer
}

func (c *FactorConfig) setDefaults() {
	if c.AMQPURL == "" {
		c.AMQPURL = broker.DefaultURL
	}
	if len(c.QueueTypes) == 0 {
		c.QueueTypes = []string{broker.QueueClassic, broker.QueueQuorum}
	}
	if c.Messages <= 0 {
		c.Messages = 40000
	}
	if c.Runs <= 0 {
		c.Runs = 3
	}
	if c.Size <= 0 {
		c.Size = 2300
	}
	if c.Window <= 0 {
		c.Window = 512
	}
	if c.Rcpts <= 0 {
		c.Rcpts = 1
	}
}

// FactorRun is one run of one row.
type FactorRun struct {
	Rate             float64 // confirmed msg/s
	RabbitCPUms      float64 // RabbitMQ CPU-ms per message
	RabbitSyscalls   float64 // RabbitMQ read+write system calls per message; -1 unknown
	PubCPUms         float64 // the publisher's CPU-ms per message
	PubSyscalls      float64
	Confirmed, Count int64 // confirms, and messages found in the queue
	Err              string
}

// FactorReport is what a factor run measured.
type FactorReport struct {
	Config   FactorConfig
	Shapes   []FactorShape
	Runs     map[string]map[string][]FactorRun // queue type → row ID → runs
	RabbitMQ string
	BodySize map[string]int // envelope → body octets published
	Started  time.Time
	Took     time.Duration
	Load     [2]float64 // load average at the start and the end
	Notes    []string
}

// RunFactors measures every row of the factor table with a plain
// amqp091-go publisher (broker.RawPublish), each row into queues and
// exchanges of its own that are deleted afterwards.
func RunFactors(ctx context.Context, cfg FactorConfig) (*FactorReport, error) {
	cfg.setDefaults()
	shapes := FactorShapes()
	if cfg.Rows != "" {
		re, err := regexp.Compile(cfg.Rows)
		if err != nil {
			return nil, fmt.Errorf("factors: rows: %w", err)
		}
		shapes = slices.DeleteFunc(shapes, func(f FactorShape) bool { return !re.MatchString(f.ID) })
	}
	rep := &FactorReport{Config: cfg, Shapes: shapes, Runs: map[string]map[string][]FactorRun{}, Started: time.Now(), BodySize: map[string]int{}}
	rep.Load[0] = loadAvg()
	defer func() { rep.Load[1] = loadAvg() }()
	admin, err := amqp.Dial(cfg.AMQPURL)
	if err != nil {
		return nil, fmt.Errorf("factors: dial %s: %w", broker.RedactURL(cfg.AMQPURL), err)
	}
	defer admin.Close()
	if v, ok := admin.Properties["version"].(string); ok {
		rep.RabbitMQ = v
	}
	rabbit := FindProcess("beam.smp")
	if rabbit == 0 {
		return nil, errors.New("factors: no beam.smp process: RabbitMQ must run on this machine")
	}
	if _, ok := ProcSyscalls(rabbit); !ok {
		rep.Notes = append(rep.Notes, "RabbitMQ's /proc/<pid>/io is not readable (needs ptrace access): no system call figures.")
	}
	for _, env := range []string{EnvNone, EnvTrace} {
		rep.BodySize[env] = len(factorPublishing(FactorShape{Envelope: env}, &cfg).Body)
	}
	for run := 0; run < cfg.Runs; run++ {
		for _, qt := range cfg.QueueTypes {
			if rep.Runs[qt] == nil {
				rep.Runs[qt] = map[string][]FactorRun{}
			}
			for i, f := range shapes {
				if ctx.Err() != nil {
					rep.Took = time.Since(rep.Started)
					return rep, ctx.Err()
				}
				if f.QueueV2 && qt != broker.QueueClassic {
					continue
				}
				if FindProcess("beam.smp") != rabbit {
					rep.Notes = append(rep.Notes, "RabbitMQ was restarted during the run; later rows use the new process.")
					rabbit = FindProcess("beam.smp")
				}
				if cfg.Progress != nil {
					fmt.Fprintf(cfg.Progress, "\rfactors run %d/%d %-7s [%2d/%d] %-45s", run+1, cfg.Runs, qt, i+1, len(shapes), truncate(f.ID, 45))
				}
				fr := factorRun(ctx, admin, rabbit, qt, f, &cfg)
				if fr.Err != "" {
					rep.Notes = append(rep.Notes, fmt.Sprintf("%s %s run %d: %s", qt, f.ID, run+1, fr.Err))
					if admin.IsClosed() {
						if admin, err = amqp.Dial(cfg.AMQPURL); err != nil {
							return rep, fmt.Errorf("factors: redial: %w", err)
						}
					}
				}
				if cfg.Progress != nil {
					fmt.Fprintf(cfg.Progress, " %6.0f msg/s %.4f ms/msg", fr.Rate, fr.RabbitCPUms)
				}
				rep.Runs[qt][f.ID] = append(rep.Runs[qt][f.ID], fr)
			}
		}
	}
	if cfg.Progress != nil {
		fmt.Fprintln(cfg.Progress)
	}
	rep.Took = time.Since(rep.Started)
	return rep, nil
}

// factorKey is the routing key of the named exchanges' bindings.
const factorKey = "inbound"

// factorRun declares a row's topology, publishes cfg.Messages, checks they
// all landed in the queue, and deletes the topology.
func factorRun(ctx context.Context, admin *amqp.Connection, rabbit int, qt string, f FactorShape, cfg *FactorConfig) (fr FactorRun) {
	ch, err := admin.Channel()
	if err != nil {
		fr.Err = err.Error()
		return fr
	}
	defer ch.Close()
	base := fmt.Sprintf("lsmtp.factors.%08x.%s", rand.Uint32(), f.ID)
	queue, unroutable := base, base+".unroutable"
	exchange, ae := "", base+".ae"
	key := queue
	var cleanup []func() error
	defer func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			if err := cleanup[i](); err != nil && fr.Err == "" {
				fr.Err = "cleanup: " + err.Error()
			}
		}
	}()
	qargs := amqp.Table{"x-queue-type": qt}
	if f.QueueV2 {
		qargs["x-queue-version"] = int32(2)
	}
	declareQueue := func(name string) error {
		if _, err := ch.QueueDeclare(name, true, false, false, false, qargs); err != nil {
			return fmt.Errorf("declare queue %s: %w", name, err)
		}
		cleanup = append(cleanup, func() error { _, err := ch.QueueDelete(name, false, false, false); return err })
		return nil
	}
	declareExchange := func(name, kind string, args amqp.Table) error {
		if err := ch.ExchangeDeclare(name, kind, true, false, false, false, args); err != nil {
			return fmt.Errorf("declare exchange %s: %w", name, err)
		}
		cleanup = append(cleanup, func() error { return ch.ExchangeDelete(name, false, false) })
		return nil
	}
	if err := declareQueue(queue); err != nil {
		fr.Err = err.Error()
		return fr
	}
	if f.Exchange != ExDefault {
		exchange, key = base+"."+f.Exchange, factorKey
		var args amqp.Table
		if f.AltExchange {
			// RabbitMQ's alternate exchange: what no binding routes
			// goes there, is confirmed, and lands in "unroutable".
			if err := declareExchange(ae, amqp.ExchangeFanout, nil); err == nil {
				err = declareQueue(unroutable)
				if err == nil {
					err = ch.QueueBind(unroutable, "", ae, false, nil)
				}
				if err != nil {
					fr.Err = err.Error()
					return fr
				}
			} else {
				fr.Err = err.Error()
				return fr
			}
			args = amqp.Table{"alternate-exchange": ae}
		}
		if err := declareExchange(exchange, f.Exchange, args); err != nil {
			fr.Err = err.Error()
			return fr
		}
		if err := ch.QueueBind(queue, factorKey, exchange, false, nil); err != nil {
			fr.Err = err.Error()
			return fr
		}
	}

	nconns := 1
	if f.ConnPerChan {
		nconns = f.Channels
	}
	var conns []*amqp.Connection
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range nconns {
		c, err := amqp.Dial(cfg.AMQPURL)
		if err != nil {
			fr.Err = err.Error()
			return fr
		}
		conns = append(conns, c)
	}
	shape := broker.RawShape{
		Exchange: exchange, Key: key, Mandatory: f.Mandatory,
		Msg:      factorPublishing(f, cfg),
		Channels: f.Channels, Window: max(cfg.Window/f.Channels, 1),
		Count: cfg.Messages, ConfirmTimeout: 30 * time.Second,
	}

	waitProcQuiet(rabbit, 0.2, 5*time.Second)
	r0, p0 := sampleProc(rabbit), sampleProc(0)
	res, err := broker.RawPublish(ctx, conns, shape)
	// Work the broker does for these messages right after confirming
	// them counts too (up to a second of it).
	waitProcQuiet(rabbit, 0.2, time.Second)
	r1, p1 := sampleProc(rabbit), sampleProc(0)
	if err != nil {
		fr.Err = err.Error()
	}
	fr.Confirmed = res.Confirmed
	fr.Rate = res.Rate()
	fr.RabbitCPUms, fr.RabbitSyscalls = perMessage(r0, r1, res.Confirmed)
	fr.PubCPUms, fr.PubSyscalls = perMessage(p0, p1, res.Confirmed)
	if st, err := ch.QueueDeclarePassive(queue, true, false, false, false, qargs); err == nil {
		fr.Count = int64(st.Messages)
	} else if fr.Err == "" {
		fr.Err = "count: " + err.Error()
	}
	switch {
	case fr.Err != "":
	case res.Nacked > 0 || res.Returned > 0:
		fr.Err = fmt.Sprintf("%d nacked, %d returned", res.Nacked, res.Returned)
	case fr.Count != int64(cfg.Messages) || res.Confirmed != int64(cfg.Messages):
		fr.Err = fmt.Sprintf("%d published, %d confirmed, %d in the queue", cfg.Messages, res.Confirmed, fr.Count)
	}
	return fr
}

// factorPublishing is the message a row publishes: the same mail (a
// Received: field as lsmtp writes it, a few header fields, filler to
// cfg.Size octets) with the row's envelope encoding.
func factorPublishing(f FactorShape, cfg *FactorConfig) amqp.Publishing {
	received := time.Now()
	rcpts := make([]string, cfg.Rcpts)
	for i := range rcpts {
		rcpts[i] = fmt.Sprintf("rcpt%d@example.com", i+1)
	}
	var b strings.Builder
	if f.Envelope == EnvTrace {
		// The mail convention (RFC 5321 section 4.4, Postfix's
		// X-Original-To): the reverse path and one field per envelope
		// recipient, before our Received: field.
		fmt.Fprintf(&b, "Return-Path: <sender@example.org>\r\n")
		for _, r := range rcpts {
			fmt.Fprintf(&b, "X-Original-To: <%s>\r\n", r)
		}
	}
	mail := fmt.Sprintf("Received: from client.example.org (client.example.org [127.0.0.1])\r\n"+
		"\tby node.example.net (lsmtp) with ESMTP id 4bZkq1TqnWz7XyQm\r\n"+
		"\tfor <%s>; %s\r\n"+
		"From: <sender@example.org>\r\nTo: <%s>\r\nSubject: factor table\r\n"+
		"Message-ID: <factors@example.org>\r\nDate: %s\r\n\r\n",
		rcpts[0], received.Format(time.RFC1123Z), rcpts[0], received.Format(time.RFC1123Z))
	b.WriteString(mail)
	for n, line := len(mail), 0; n+2 < cfg.Size; line++ {
		k := min(76, cfg.Size-n-2)
		b.WriteString(strings.Repeat(string(rune('a'+line%26)), k))
		b.WriteString("\r\n")
		n += k + 2
	}
	body := []byte(b.String())
	pub := amqp.Publishing{ContentType: broker.ContentType, DeliveryMode: amqp.Persistent, Body: body}
	if f.Props {
		pub.MessageId = "4bZkq1TqnWz7XyQm"
		pub.Timestamp = received
		pub.AppId = broker.AppID
	}
	size := cfg.Size
	switch f.Envelope {
	case EnvTinyHeader:
		pub.Headers = amqp.Table{"v": "1"}
	case EnvHeaders:
		pub.Headers = broker.CeilingHeaders("node.example.net", size, received)
		list := make([]any, len(rcpts))
		for i, r := range rcpts {
			list[i] = r
		}
		pub.Headers[broker.HeaderRecipients] = list
	case EnvJSONHeader:
		env, _ := json.Marshal(map[string]any{
			"sender": "sender@example.org", "recipients": rcpts,
			"client_ip": "127.0.0.1", "client_port": 40000, "helo": "client.example.org",
			"declared_size": size, "body": "8BITMIME", "smtputf8": false,
			"received_at": received.UTC().Format(broker.ReceivedAtLayout), "node": "node.example.net",
		})
		pub.Headers = amqp.Table{"smtp-envelope": string(env)}
	}
	return pub
}

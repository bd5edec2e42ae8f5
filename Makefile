# lsmtp: see README.md. Every target works from a clean checkout.
GO       ?= go
PKGS     := ./...
FUZZTIME ?= 30s

.PHONY: stress spool-outage run test test-short bench bench-quick bench-factors bench-peers bench-12k bench-12k-quick bench-tls fuzz lint build chaos cluster

build:
	$(GO) build -o bin/lsmtp ./cmd/lsmtp

# Runs the server against the local RabbitMQ (installed or started if need
# be, see tools/rabbitmq-up), spooling to $(SPOOL); ARGS come after, so
# ARGS=--spool-dir=... wins, and SPOOL= runs without a spool.
SPOOL ?= ./var/spool
run: build
	@tools/rabbitmq-up
	./bin/lsmtp $(if $(SPOOL),--spool-dir $(SPOOL)) $(ARGS)

# Packages where goroutines cross (event loops and sink completions, the
# broker's confirm readers, the node's reload and admin, the harnesses'
# clients and proxies): make test runs them again under the race detector.
RACEPKGS ?= ./engine ./broker ./internal/e2e ./internal/chaos ./internal/faultproxy ./cmd/lsmtp

# The whole suite, then RACEPKGS with -race; broker tests need RabbitMQ on
# 127.0.0.1:5672 and the --sink nats tests NATS with JetStream on
# 127.0.0.1:4222 (each installed or started if need be, see
# tools/rabbitmq-up and tools/nats-up).
# LSMTP_CLUSTER=1 make test adds internal/cluster's 20 s fault runs against
# a three-node cluster of its own (about 3 minutes more).
test:
	@command -v "$$($(GO) env CC)" >/dev/null || { echo "go test -race needs a C compiler for cgo: 'apt-get install gcc' (Debian/Ubuntu)" >&2; exit 1; }
	@tools/rabbitmq-up
	@tools/nats-up
	$(GO) vet $(PKGS)
	$(GO) test -count=1 -timeout 15m $(PKGS)
	$(GO) test -race -count=1 -timeout 15m $(RACEPKGS)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet $(PKGS)

# Each fuzz target for FUZZTIME (default 30s): make fuzz FUZZTIME=10m runs longer.
# New crashers land in testdata/fuzz/<Target>/ and then run as regression tests.
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$t ($(FUZZTIME))"; \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# The benchmark suite (about 25 minutes): Table I of the paper and beyond,
# every row checked against RabbitMQ, then the factor table, lsmtp
# side by side with the go-smtp bridge and lsmtp → JetStream (skipped
# without a nats-server; BENCHFLAGS='-sections none' skips those); writes
# BENCHMARKS.md and bench/*.png.
# BENCHFLAGS passes extra flags, e.g. BENCHFLAGS='-profile /tmp/prof -rows pipe'.
bench: build
	$(GO) build -o bin/lsmtp-bench ./cmd/lsmtp-bench
	@tools/rabbitmq-up
	./bin/lsmtp-bench suite -lsmtp bin/lsmtp -out BENCHMARKS.md -plots bench $(BENCHFLAGS)

# A subset in under 2 minutes; report and plots go to bench/quick/ (not committed).
bench-quick: build
	$(GO) build -o bin/lsmtp-bench ./cmd/lsmtp-bench
	@tools/rabbitmq-up
	./bin/lsmtp-bench suite -quick -notes '' -lsmtp bin/lsmtp -out bench/quick/BENCHMARKS.md -plots bench/quick $(BENCHFLAGS)

# Issue 11's scenario alone (about 1.5 minutes; -quick: a 4 s window):
# 12,000 sessions at 315 ms RTT from two generator processes, pipelining,
# 10 msg/conn, lsmtp's defaults but for --max-conns 0 --max-conns-per-ip 0;
# the report (4xx, msg/s, the in-flight budget's peak use, RabbitMQ count)
# goes to bench/quick/12k/ (not committed). make bench runs the row too.
bench-12k bench-12k-quick: build
	$(GO) build -o bin/lsmtp-bench ./cmd/lsmtp-bench
	@tools/rabbitmq-up
	./bin/lsmtp-bench suite $(if $(filter bench-12k-quick,$@),-quick) -rows '^scale-12k-pipe-k10$$' -sections none -notes '' -lsmtp bin/lsmtp -out bench/quick/12k/BENCHMARKS.md -plots bench/quick/12k $(BENCHFLAGS)

# What each part of a publish costs RabbitMQ (about 8 minutes): a plain
# amqp091-go publisher, one row per publish shape, classic and quorum
# queues; writes its section of bench/factors.md (make bench includes it).
bench-factors:
	$(GO) build -o bin/lsmtp-bench ./cmd/lsmtp-bench
	@tools/rabbitmq-up
	./bin/lsmtp-bench factors -out bench/factors.md $(BENCHFLAGS)

# lsmtp against the go-smtp bridge in ../shared/peers/gosmtp-amqp (built
# from there for the run), alternating, on classic and quorum queues
# (about 5 minutes; Postfix's smtp-source rows need postfix installed);
# writes its section of bench/factors.md (make bench includes it).
bench-peers: build
	$(GO) build -o bin/lsmtp-bench ./cmd/lsmtp-bench
	@tools/rabbitmq-up
	./bin/lsmtp-bench peers -lsmtp bin/lsmtp -out bench/factors.md $(BENCHFLAGS)

# lsmtp --sink nats beside a raw nats.go async-publish ceiling and beside
# lsmtp --sink amqp, alternating, under the same SMTP load (about 3
# minutes; BENCHFLAGS=-quick for one pair in about a minute); needs
# nats-server with JetStream on 127.0.0.1:4222 and RabbitMQ; writes
# bench/nats.md (make bench includes it).
.PHONY: bench-nats
bench-nats: build
	$(GO) build -o bin/lsmtp-bench ./cmd/lsmtp-bench
	@tools/rabbitmq-up
	@tools/nats-up
	./bin/lsmtp-bench nats -lsmtp bin/lsmtp -out bench/nats.md $(BENCHFLAGS)

# TLS (about 5 minutes): handshakes per second with ECDSA P-256 and RSA
# 2048 certificates, msg/s at 1 and 100 messages per connection and
# memory per idle session, lsmtp in the clear and over TLS beside the
# go-smtp bridge in ../shared/peers/gosmtp-amqp (built from there; its
# TLS is a goroutine per connection), null sinks; writes bench/tls.md
# (make bench includes it).
bench-tls: build
	$(GO) build -o bin/lsmtp-bench ./cmd/lsmtp-bench
	./bin/lsmtp-bench tls -lsmtp bin/lsmtp -out bench/tls.md $(BENCHFLAGS)

# Chaos (about 7 minutes): the short variant with every fault (go test
# ./internal/chaos), then lsmtp-chaos with its defaults, then make cluster
# with 20 s around each fault (below). lsmtp-chaos puts lsmtp under load
# while its broker connection is cut, RabbitMQ's application is stopped
# and started (rabbitmqctl; always started again), and lsmtp is restarted
# with SIGTERM.
# Fails if a message answered 250 is not in the queue. Other users of the
# local RabbitMQ see its outages. CHAOSFLAGS passes flags to lsmtp-chaos,
# e.g. CHAOSFLAGS='--duration 2m --sessions 40'.
chaos:
	@tools/rabbitmq-up
	LSMTP_CHAOS_RABBIT_RESTART=1 $(GO) test -count=1 -run '^TestChaosShort$$' -v ./internal/chaos
	$(GO) run ./cmd/lsmtp-chaos $(CHAOSFLAGS)
	$(MAKE) cluster CLUSTER_DURATION=20s

# Broker failover (about 6 minutes): three RabbitMQ nodes of its own on
# 127.0.0.1:5681-5683 (rabbit-c1..c3@localhost, data in a temporary
# directory, always stopped), a quorum queue with three replicas, and
# lsmtp in-process given all three under load from 30 sessions through
# kill -9 of the node it is connected to, kill -9 of the queue's leader,
# a node restarted, and a rolling restart. The machine's RabbitMQ on 5672
# is not touched. Fails if a message answered 250 is not in the queue; the
# last line sums up. CLUSTER_DURATION is the load around each fault,
# CLUSTERFLAGS passes test flags (e.g. CLUSTERFLAGS='-test.run Faults/rolling').
CLUSTER_DURATION ?= 60s
cluster:
	$(GO) test -c -o bin/cluster.test ./internal/cluster
	LSMTP_CLUSTER=1 LSMTP_CLUSTER_DURATION=$(CLUSTER_DURATION) bin/cluster.test -test.v -test.count=1 -test.timeout 30m $(CLUSTERFLAGS)

# The in-flight budget under 500 simultaneous 25 MiB messages and a flood of
# idle connections, on the real binary (the small versions run in make test).
stress:
	LSMTP_STRESS=1 $(GO) test -count=1 -v -timeout 15m ./internal/stress

# The spool through a real broker outage (about 2 minutes): RabbitMQ's
# application stopped (rabbitmqctl stop_app; always started again) for
# LSMTP_TEST_STOP_APP_SECONDS (default 60) under the load of 50 sessions;
# fails on any tempfail, on a 250 not in the queue, or on a sender's
# spooled messages out of order. Other users of the local RabbitMQ see the
# outage. If the test binary dies before its cleanup (a -timeout panic),
# start_app runs here.
spool-outage:
	@tools/rabbitmq-up
	LSMTP_TEST_STOP_APP=1 $(GO) test -count=1 -v -timeout 30m -run '^TestSpoolOutageStopApp$$' ./internal/e2e || { rabbitmqctl start_app; exit 1; }

// Package cluster runs a RabbitMQ cluster of its own on this machine, for
// tests of lsmtp against broker failover: three Erlang nodes
// (rabbit-c1@localhost … rabbit-c3@localhost) with their own AMQP and
// distribution ports, a configuration file each and their data under a
// temporary directory, joined into one cluster.
//
// The machine's own RabbitMQ (rabbit@localhost, 127.0.0.1:5672) is never
// touched: the nodes get their own Erlang cookie, so that no command of
// this package can even reach it, every process is found again by its
// RABBITMQ_NODENAME, and the node names are our own.
//
// rabbitmq-server refuses to run as root and needs its files owned by the
// rabbitmq user, so every node and every CLI call runs as that user (the
// credentials are set on the child process, as setpriv does).
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Where RabbitMQ's Debian package puts the real scripts (/usr/sbin holds
// wrappers that su to rabbitmq and cd to /var/lib/rabbitmq).
const (
	rabbitBin = "/usr/lib/rabbitmq/bin"
	cookie    = "LSMTPCLUSTERTESTCOOKIE" // not the machine's: its node cannot be reached with it
)

// Options configures Start.
type Options struct {
	Nodes    int    // 3 when 0
	BasePort int    // AMQP port of the first node, 5681 when 0; the distribution port is 20000 above
	Prefix   string // node name prefix, "rabbit-c" when empty: rabbit-c1@localhost …
	// Logf receives progress lines (node started, joined); nil drops them.
	Logf func(format string, args ...any)
	// Register, when set, is called with the cluster before its first
	// node starts, so that a signal handler can Close it even while
	// Start is still running.
	Register func(*Cluster)
}

// Node is one RabbitMQ node of the cluster.
type Node struct {
	Name     string // Erlang node name, e.g. rabbit-c1@localhost
	Port     int    // AMQP port on 127.0.0.1
	DistPort int    // Erlang distribution port on 127.0.0.1
	dir      string

	mu   sync.Mutex
	cmd  *exec.Cmd     // the rabbitmq-server script while it runs
	done chan struct{} // closed when cmd has exited
}

// URL is the node's AMQP URL with the default guest credentials.
func (n *Node) URL() string { return fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", n.Port) }

// Cluster is a running set of nodes. Close stops them all.
type Cluster struct {
	Nodes []*Node
	// StartedIn is how long Start took: the nodes up, then joined.
	StartedIn time.Duration

	dir      string // root of the nodes' directories, owned by rabbitmq
	home     string // HOME of every node and CLI call: holds the cookie
	uid, gid uint32
	logf     func(string, ...any)
	closed   atomic.Bool // set by Close: no node starts after it
}

// Start starts opts.Nodes nodes in parallel, waits for each, joins all to
// the first and returns the running cluster. On error whatever was
// started is stopped again.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.BasePort == 0 {
		opts.BasePort = 5681
	}
	if opts.Prefix == "" {
		opts.Prefix = "rabbit-c"
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if _, err := os.Stat(filepath.Join(rabbitBin, "rabbitmq-server")); err != nil {
		return nil, fmt.Errorf("RabbitMQ is not installed (apt-get install rabbitmq-server): %w", err)
	}
	u, err := user.Lookup("rabbitmq")
	if err != nil {
		return nil, fmt.Errorf("the rabbitmq user: %w", err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	c := &Cluster{uid: uint32(uid), gid: uint32(gid), logf: opts.Logf}
	for i := range opts.Nodes {
		port := opts.BasePort + i
		c.Nodes = append(c.Nodes, &Node{
			Name:     fmt.Sprintf("%s%d@localhost", opts.Prefix, i+1),
			Port:     port,
			DistPort: port + 20000,
		})
	}
	if opts.Register != nil {
		opts.Register(c)
	}
	// A run that was killed before its cleanup leaves its nodes behind.
	KillNodes(c.names()...)
	for _, n := range c.Nodes {
		for _, p := range []int{n.Port, n.DistPort} {
			// A cluster stopped just before may still be letting go of
			// its sockets.
			free := portFree(p)
			for deadline := time.Now().Add(15 * time.Second); !free && time.Now().Before(deadline); free = portFree(p) {
				time.Sleep(250 * time.Millisecond)
			}
			if !free {
				return nil, fmt.Errorf("port %d for %s is in use", p, n.Name)
			}
		}
	}
	begin := time.Now()
	if err := c.layout(); err != nil {
		c.Close()
		return nil, err
	}
	errs := make([]error, len(c.Nodes))
	var wg sync.WaitGroup
	for i := range c.Nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.StartNode(ctx, i)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		c.Close()
		return nil, err
	}
	c.logf("cluster: %d nodes up in %s", len(c.Nodes), time.Since(begin).Round(time.Millisecond))
	for i := 1; i < len(c.Nodes); i++ {
		if err := c.join(ctx, i, 0); err != nil {
			c.Close()
			return nil, err
		}
	}
	c.StartedIn = time.Since(begin)
	c.logf("cluster: %d nodes joined in %s", len(c.Nodes), c.StartedIn.Round(time.Millisecond))
	return c, nil
}

func (c *Cluster) names() []string {
	var s []string
	for _, n := range c.Nodes {
		s = append(s, n.Name)
	}
	return s
}

// URLs are the nodes' AMQP URLs, in order.
func (c *Cluster) URLs() []string {
	var s []string
	for _, n := range c.Nodes {
		s = append(s, n.URL())
	}
	return s
}

// layout writes the directories: HOME with the cookie, and for each node
// its configuration file, an empty plugin list (no management) and an
// empty rabbitmq-env.conf, which keeps the machine's
// /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost) out.
func (c *Cluster) layout() error {
	dir, err := os.MkdirTemp("", "lsmtp-cluster-")
	if err != nil {
		return err
	}
	c.dir = dir
	c.home = filepath.Join(dir, "home")
	files := map[string]string{filepath.Join(c.home, ".erlang.cookie"): cookie}
	for _, n := range c.Nodes {
		n.dir = filepath.Join(dir, strings.SplitN(n.Name, "@", 2)[0])
		files[filepath.Join(n.dir, "rabbitmq.conf")] = fmt.Sprintf(
			"listeners.tcp.local = 127.0.0.1:%d\n"+
				"distribution.listener.interface = 127.0.0.1\n"+
				"distribution.listener.port_range.min = %d\n"+
				"distribution.listener.port_range.max = %d\n"+
				"loopback_users.guest = true\n"+
				"log.console = true\nlog.console.level = info\nlog.file = false\n",
			n.Port, n.DistPort, n.DistPort)
		files[filepath.Join(n.dir, "enabled_plugins")] = "[].\n"
		files[filepath.Join(n.dir, "rabbitmq-env.conf")] = ""
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			return err
		}
	}
	// Erlang refuses a cookie file others can read.
	if err := os.Chmod(filepath.Join(c.home, ".erlang.cookie"), 0o400); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	return filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(path, int(c.uid), int(c.gid))
	})
}

// env is the environment of node n's server (with server set) or of CLI
// calls against it. Only the server's has RABBITMQ_NODENAME, by which
// FindNodes knows it: the CLI tools run an Erlang VM too.
func (c *Cluster) env(n *Node, server bool) []string {
	env := []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + c.home,
		"LANG=C.UTF-8",
		"RABBITMQ_NODE_PORT=" + strconv.Itoa(n.Port),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(n.DistPort),
		"RABBITMQ_CONFIG_FILE=" + filepath.Join(n.dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(n.dir, "advanced.config"),
		"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(n.dir, "rabbitmq-env.conf"),
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + filepath.Join(n.dir, "enabled_plugins"),
		"RABBITMQ_MNESIA_BASE=" + filepath.Join(n.dir, "mnesia"),
		"RABBITMQ_LOG_BASE=" + filepath.Join(n.dir, "log"),
		"RABBITMQ_PID_FILE=" + filepath.Join(n.dir, "pid"),
		"RABBITMQ_LOGS=-",
		"ERL_EPMD_ADDRESS=127.0.0.1",
	}
	if server {
		env = append(env, "RABBITMQ_NODENAME="+n.Name)
	}
	return env
}

func (c *Cluster) asRabbit(cmd *exec.Cmd, n *Node, server bool) {
	cmd.Env = c.env(n, server)
	cmd.Dir = n.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: c.uid, Gid: c.gid},
		// Its own process group: a Ctrl-C at the terminal reaches the
		// test, which stops the nodes, not the nodes themselves.
		Setpgid: true,
	}
}

// StartNode starts node i (again, with its data: a node that was part of
// the cluster rejoins it) and waits until it runs.
func (c *Cluster) StartNode(ctx context.Context, i int) error {
	n := c.Nodes[i]
	n.mu.Lock()
	if c.closed.Load() {
		n.mu.Unlock()
		return fmt.Errorf("%s: the cluster is closed", n.Name)
	}
	if n.cmd != nil {
		n.mu.Unlock()
		return fmt.Errorf("%s: already running", n.Name)
	}
	out, err := os.OpenFile(filepath.Join(n.dir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.mu.Unlock()
		return err
	}
	cmd := exec.Command(filepath.Join(rabbitBin, "rabbitmq-server"))
	c.asRabbit(cmd, n, true)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		n.mu.Unlock()
		return fmt.Errorf("%s: %w", n.Name, err)
	}
	done := make(chan struct{})
	n.cmd, n.done = cmd, done
	n.mu.Unlock()
	go func() {
		cmd.Wait()
		out.Close()
		n.mu.Lock()
		if n.cmd == cmd {
			n.cmd = nil
		}
		n.mu.Unlock()
		close(done)
	}()
	return c.awaitStartup(ctx, i, done)
}

// awaitStartup waits until node i has booted and accepts AMQP
// connections, or its server exited.
func (c *Cluster) awaitStartup(ctx context.Context, i int, exited <-chan struct{}) error {
	n := c.Nodes[i]
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	for {
		if _, err := c.Ctl(ctx, i, "rabbitmqctl", "await_startup", "--timeout", "20"); err == nil {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited while starting: %s", n.Name, c.ConsoleTail(i, 15))
		case <-ctx.Done():
			return fmt.Errorf("%s not up: %w: %s", n.Name, ctx.Err(), c.ConsoleTail(i, 15))
		case <-time.After(200 * time.Millisecond):
		}
	}
	for {
		conn, err := amqp.DialConfig(n.URL(), amqp.Config{Dial: amqp.DefaultDial(2 * time.Second)})
		if err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited while starting: %s", n.Name, c.ConsoleTail(i, 15))
		case <-ctx.Done():
			return fmt.Errorf("%s: no AMQP on port %d: %v", n.Name, n.Port, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// join makes node i a member of node to's cluster.
func (c *Cluster) join(ctx context.Context, i, to int) error {
	for _, args := range [][]string{{"stop_app"}, {"join_cluster", c.Nodes[to].Name}, {"start_app"}} {
		if _, err := c.Ctl(ctx, i, "rabbitmqctl", args...); err != nil {
			return err
		}
	}
	return nil
}

// Ctl runs a RabbitMQ CLI tool (rabbitmqctl, rabbitmq-queues,
// rabbitmq-diagnostics) against node i and returns its output.
func (c *Cluster) Ctl(ctx context.Context, i int, tool string, args ...string) (string, error) {
	n := c.Nodes[i]
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(rabbitBin, tool), append([]string{"-n", n.Name, "-q"}, args...)...)
	c.asRabbit(cmd, n, false)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s -n %s %s: %w: %s", tool, n.Name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// Running reports whether node i's server process runs.
func (c *Cluster) Running(i int) bool {
	n := c.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// runningNode returns node i and the channel closed when its server
// process exits, or an error when that process does not run.
func (c *Cluster) runningNode(i int) (*Node, chan struct{}, error) {
	n := c.Nodes[i]
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return n, nil, fmt.Errorf("%s is not running", n.Name)
	}
	return n, n.done, nil
}

// Kill sends SIGKILL to node i's Erlang VM (kill -9: no goodbye to its
// peers or clients) and waits until its server is gone.
func (c *Cluster) Kill(i int) error {
	n, done, err := c.runningNode(i)
	if err != nil {
		return err
	}
	if KillNodes(n.Name) == 0 {
		return fmt.Errorf("%s: no beam.smp found", n.Name)
	}
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s did not exit 30 s after SIGKILL", n.Name)
	}
	return waitGone(30*time.Second, n.Name)
}

// waitGone waits until no Erlang VM of the named nodes is left, killing
// again whatever it finds: the script that started a VM can be gone while
// the VM, killed, still tears down its memory and holds its ports.
func waitGone(within time.Duration, names ...string) error {
	deadline := time.Now().Add(within)
	for {
		left := FindNodes(names...)
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes of %v still running %s after SIGKILL: %v", names, within, left)
		}
		KillNodes(names...)
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops node i gracefully (rabbitmqctl stop: clients are closed,
// quorum queue leadership is handed over) and waits until it is gone.
func (c *Cluster) Stop(ctx context.Context, i int) error {
	n, done, err := c.runningNode(i)
	if err != nil {
		return err
	}
	if _, err := c.Ctl(ctx, i, "rabbitmqctl", "stop"); err != nil {
		return err
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		return fmt.Errorf("%s did not exit 60 s after rabbitmqctl stop", n.Name)
	}
	return waitGone(30*time.Second, n.Name)
}

// Close kills every node, waits for their servers and removes the
// directories. It is safe to call more than once and from a signal
// handler's goroutine.
func (c *Cluster) Close() error {
	c.closed.Store(true)
	KillNodes(c.names()...)
	var errs []error
	for _, n := range c.Nodes {
		n.mu.Lock()
		cmd, done := n.cmd, n.done
		n.mu.Unlock()
		if cmd == nil {
			continue
		}
		// What is left of its process group (the script, erl_child_setup).
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			errs = append(errs, fmt.Errorf("%s: server did not exit", n.Name))
		}
	}
	if err := waitGone(30*time.Second, c.names()...); err != nil {
		errs = append(errs, err)
	}
	if c.dir != "" && len(errs) == 0 {
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ConsoleTail returns the last lines of node i's console log.
func (c *Cluster) ConsoleTail(i, lines int) string {
	b, err := os.ReadFile(filepath.Join(c.Nodes[i].dir, "console.log"))
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(all[max(0, len(all)-lines):], "\n")
}

// Leader returns the index of the node leading quorum queue q, asking
// node ask.
func (c *Cluster) Leader(ctx context.Context, ask int, q string) (int, error) {
	out, err := c.Ctl(ctx, ask, "rabbitmqctl", "list_queues", "--no-table-headers", "name", "leader")
	if err != nil {
		return -1, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == q {
			for i, n := range c.Nodes {
				if n.Name == f[1] {
					return i, nil
				}
			}
			return -1, fmt.Errorf("queue %s led by %s, not a node of the cluster", q, f[1])
		}
	}
	return -1, fmt.Errorf("queue %s not listed by %s: %q", q, c.Nodes[ask].Name, out)
}

// Members returns the quorum queue's members that are in sync, as node
// names, asking node ask (rabbitmq-queues quorum_status lists every
// member with its Raft state).
func (c *Cluster) Members(ctx context.Context, ask int, q string) (online []string, err error) {
	out, err := c.Ctl(ctx, ask, "rabbitmq-queues", "quorum_status", q)
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(out, "\n") {
		if !strings.Contains(line, "leader") && !strings.Contains(line, "follower") {
			continue
		}
		for _, n := range c.Nodes {
			if strings.Contains(line, n.Name) {
				online = append(online, n.Name)
			}
		}
	}
	return online, nil
}

// Connected returns the indexes of the nodes that have a client
// connection named name (AMQP client property connection_name). The
// list is the cluster's; the server port of each connection tells the
// node.
func (c *Cluster) Connected(ctx context.Context, name string) ([]int, error) {
	for i := range c.Nodes {
		if !c.Running(i) {
			continue
		}
		out, err := c.Ctl(ctx, i, "rabbitmqctl", "list_connections", "--no-table-headers", "port", "client_properties")
		if err != nil {
			return nil, err
		}
		var at []int
		for _, line := range strings.Split(out, "\n") {
			port, props, ok := strings.Cut(line, "\t")
			if !ok || !strings.Contains(props, name) {
				continue
			}
			for j, n := range c.Nodes {
				if strconv.Itoa(n.Port) == strings.TrimSpace(port) {
					at = append(at, j)
				}
			}
		}
		return at, nil
	}
	return nil, errors.New("no node running")
}

// KillNodes sends SIGKILL to every Erlang VM running one of the named
// nodes and returns how many it found. A process is recognised by the
// RABBITMQ_NODENAME in its environment, which the machine's own node
// (rabbit@localhost, started without it) never matches.
func KillNodes(names ...string) int {
	pids := FindNodes(names...)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return len(pids)
}

// FindNodes returns the PIDs of the beam.smp processes of the named nodes.
func FindNodes(names ...string) []int {
	want := map[string]bool{}
	for _, n := range names {
		want["RABBITMQ_NODENAME="+n] = true
	}
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "beam.smp" {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", e.Name(), "environ"))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(env, []byte{0}) {
			if want[string(kv)] {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

func portFree(p int) bool {
	ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// CPUTime is the CPU time (user and system) node i's Erlang VM has used
// since it started.
func (c *Cluster) CPUTime(i int) (time.Duration, error) {
	pids := FindNodes(c.Nodes[i].Name)
	if len(pids) != 1 {
		return 0, fmt.Errorf("%s: %d VMs found", c.Nodes[i].Name, len(pids))
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pids[0]))
	if err != nil {
		return 0, err
	}
	// proc(5): the fields after the command's closing parenthesis; utime
	// and stime are the 14th and 15th of the line, in clock ticks (100 Hz
	// on Linux).
	_, rest, ok := bytes.Cut(b, []byte(") "))
	f := strings.Fields(string(rest))
	if !ok || len(f) < 13 {
		return 0, fmt.Errorf("%s: unexpected /proc stat %q", c.Nodes[i].Name, b)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("%s: unexpected /proc stat %q", c.Nodes[i].Name, b)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

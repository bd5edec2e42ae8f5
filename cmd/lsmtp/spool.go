package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/spool"
)

// errStop ends a scan early.
var errStop = errors.New("stop")

// spoolCommand runs "lsmtp spool ls|show ID|export DIR": the operator's
// view of the spool named by --spool-dir (flag, variable or file). It
// only reads, so it is safe beside a running lsmtp: a record being
// written at that moment is skipped, and one delivered meanwhile may
// still be listed.
func spoolCommand(sub string, flagArgs []string, env lookupEnv, stdout, stderr io.Writer) int {
	var operand string
	switch sub {
	case "ls":
	case "show", "export":
		// The operand may come before the flags ("show ID --spool-dir d").
		if len(flagArgs) > 0 && !strings.HasPrefix(flagArgs[0], "-") {
			operand, flagArgs = flagArgs[0], flagArgs[1:]
		}
	default:
		fmt.Fprintf(stderr, "lsmtp: spool %q: want ls, show ID or export DIR\n", sub)
		return exitUsage
	}
	c, code, ok := subcommandConfig(flagArgs, env, stderr)
	if !ok {
		return code
	}
	args := c.args
	if operand == "" && sub != "ls" && len(args) > 0 {
		operand, args = args[0], args[1:]
	}
	if len(args) > 0 {
		fmt.Fprintf(stderr, "lsmtp: unexpected argument %q\n", args[0])
		return exitUsage
	}
	if sub != "ls" && operand == "" {
		fmt.Fprintf(stderr, "lsmtp: spool %s: missing %s\n", sub, map[string]string{"show": "queue ID", "export": "directory"}[sub])
		return exitUsage
	}
	dir := c.o.brk.SpoolDir
	if dir == "" {
		fmt.Fprintln(stderr, "lsmtp: no spool: set --spool-dir (or spool-dir: in the file, or $LSMTP_SPOOL_DIR)")
		return exitUsage
	}
	if _, err := os.Stat(dir); err != nil {
		fmt.Fprintln(stderr, "lsmtp:", err)
		return exitProblems
	}
	var err error
	switch sub {
	case "ls":
		err = spoolList(dir, stdout)
	case "show":
		err = spoolShow(dir, operand, stdout)
	case "export":
		err = spoolExport(dir, operand, stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "lsmtp:", err)
		return exitProblems
	}
	return exitOK
}

func spoolList(dir string, stdout io.Writer) error {
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE ID\tRECEIVED\tAGE\tOCTETS\tSENDER\tRECIPIENTS")
	n, octets := 0, 0
	damaged, err := spool.Scan(dir, func(e spool.Entry, m *sink.Message) error {
		n++
		octets += m.Data.Len()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t<%s>\t%d\n", m.QueueID, m.Received.UTC().Format(time.RFC3339),
			time.Since(m.Received).Round(time.Second), m.Data.Len(), m.Sender, len(m.Recipients))
		return nil
	})
	tw.Flush()
	fmt.Fprintf(stdout, "%d messages, %d octets", n, octets)
	if damaged > 0 {
		fmt.Fprintf(stdout, ", %d damaged regions (quarantined when lsmtp starts)", damaged)
	}
	fmt.Fprintln(stdout)
	return err
}

// envelopeJSON is a spooled message's envelope, as show and export write it.
type envelopeJSON struct {
	QueueID      string    `json:"queue_id"`
	Received     time.Time `json:"received"`
	Sender       string    `json:"sender"`
	Recipients   []string  `json:"recipients"`
	ClientIP     string    `json:"client_ip"`
	ClientPort   int       `json:"client_port"`
	Helo         string    `json:"helo"`
	DeclaredSize int64     `json:"declared_size"`
	Body         string    `json:"body"`
	SMTPUTF8     bool      `json:"smtputf8"`
	Octets       int       `json:"octets"`
	Segment      uint32    `json:"segment"`
	Offset       uint32    `json:"offset"`
}

func envelopeOf(e spool.Entry, m *sink.Message) envelopeJSON {
	j := envelopeJSON{QueueID: m.QueueID, Received: m.Received.UTC(), Sender: string(m.Sender), ClientIP: m.ClientIP,
		ClientPort: m.ClientPort, Helo: string(m.Helo), DeclaredSize: m.Size, Body: m.Body.String(), SMTPUTF8: m.SMTPUTF8,
		Octets: m.Data.Len(), Segment: e.Loc.Seg, Offset: e.Loc.Off, Recipients: []string{}}
	for _, r := range m.Recipients {
		j.Recipients = append(j.Recipients, string(r))
	}
	return j
}

func spoolShow(dir, id string, stdout io.Writer) error {
	found := false
	_, err := spool.Scan(dir, func(e spool.Entry, m *sink.Message) error {
		if m.QueueID != id {
			return nil
		}
		found = true
		b, err := json.MarshalIndent(envelopeOf(e, m), "", "  ")
		if err != nil {
			return err
		}
		stdout.Write(b)
		fmt.Fprint(stdout, "\n\n")
		stdout.Write(m.Data.B)
		return errStop
	})
	if err != nil && !errors.Is(err, errStop) {
		return err
	}
	if !found {
		return fmt.Errorf("spool: no message %s in %s", id, dir)
	}
	return nil
}

func spoolExport(dir, to string, stdout io.Writer) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	n := 0
	_, err := spool.Scan(dir, func(e spool.Entry, m *sink.Message) error {
		if m.QueueID == "" || strings.ContainsAny(m.QueueID, "/\\") || m.QueueID[0] == '.' {
			return fmt.Errorf("spool: queue ID %q cannot name a file", m.QueueID)
		}
		b, err := json.MarshalIndent(envelopeOf(e, m), "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, m.QueueID+".json"), append(b, '\n'), 0o600); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, m.QueueID+".eml"), m.Data.B, 0o600); err != nil {
			return err
		}
		n++
		return nil
	})
	fmt.Fprintf(stdout, "%d messages exported to %s\n", n, to)
	return err
}

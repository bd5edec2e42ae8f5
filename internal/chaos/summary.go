package chaos

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func (t *tally) permfails() int { return sum(t.Permfails) }

// add adds u's counts to t.
func (t *tally) add(u *tally) {
	t.Acked += u.Acked
	t.NoReply += u.NoReply
	for k, v := range u.Tempfails {
		t.Tempfails[k] += v
	}
	for k, v := range u.Permfails {
		t.Permfails[k] += v
	}
	for k, v := range u.ConnErrs {
		t.ConnErrs[k] += v
	}
}

func totalOf(phases []tally) tally {
	t := newTally()
	for i := range phases {
		t.add(&phases[i])
	}
	return t
}

// totalLocked sums the phases; l.mu must be held.
func (l *ledger) totalLocked() tally { return totalOf(l.byPhase[:]) }

func (s *Summary) total() tally { return totalOf(s.Phases[:]) }

// phaseName names a phase index: a fault, or "no fault".
func phaseName(i int) string {
	if i == int(numFaults) {
		return "no fault"
	}
	return Fault(i).String()
}

// counts renders a map as "k: v, ..." by descending count.
func counts(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

// WriteTo writes the report.
func (s *Summary) WriteTo(w io.Writer) (int64, error) {
	var b strings.Builder
	t := s.total()
	m := s.Match
	c := s.Config
	fmt.Fprintf(&b, "== lsmtp chaos run: %s of load (%s), %d sessions x %d messages per connection, pipelining %v, %d-octet messages",
		s.Elapsed.Round(time.Second), c.Duration, c.Sessions, c.PerConn, c.Pipelining, c.Size)
	if c.Rate > 0 {
		fmt.Fprintf(&b, ", at most %.0f/s", c.Rate)
	}
	fmt.Fprintf(&b, "\n   queue %s; lsmtp started %d times", s.Name, s.LSMTPStarts)
	if s.Interrupted {
		b.WriteString("; INTERRUPTED")
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "acknowledged (250):      %d of %d attempts\n", m.Acknowledged, s.Attempts)
	fmt.Fprintf(&b, "lost:                    %d", m.Lost)
	if m.Lost > 0 {
		fmt.Fprintf(&b, "  e.g. %s", strings.Join(m.LostIDs, " "))
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "in the queue:            %d messages, %d distinct queue IDs, %d foreign\n", m.InQueue, m.DistinctIDs, m.Foreign)
	fmt.Fprintf(&b, "duplicated:              %d (%d sent again after a 4xx or a lost reply although stored; %d copies of one queue ID)\n",
		m.Resent+m.SameID, m.Resent, m.SameID)
	fmt.Fprintf(&b, "stored without a 250:    %d\n", m.StoredWithout250)
	fmt.Fprintf(&b, "tempfailed (4xx):        %d  %s\n", sum(t.Tempfails), counts(t.Tempfails))
	fmt.Fprintf(&b, "permfailed (5xx):        %d  %s\n", t.permfails(), counts(t.Permfails))
	fmt.Fprintf(&b, "no reply after the body: %d\n", t.NoReply)
	fmt.Fprintf(&b, "connection errors:       %d  %s\n", sum(t.ConnErrs), counts(t.ConnErrs))

	b.WriteString("faults:\n")
	var perKind [numFaults]struct {
		n         int
		took, rec time.Duration
		recN      int
	}
	for _, ev := range s.Faults {
		k := &perKind[ev.Kind]
		k.n++
		k.took += ev.Took
		if ev.Recovered >= 0 {
			k.rec += ev.Recovered
			k.recN++
		}
	}
	for f := Fault(0); f < numFaults; f++ {
		k := perKind[f]
		if k.n == 0 {
			if !c.has(f) {
				fmt.Fprintf(&b, "  %-15s not injected (not enabled)\n", f)
			} else {
				fmt.Fprintf(&b, "  %-15s not injected\n", f)
			}
			continue
		}
		fmt.Fprintf(&b, "  %-15s x%d, %s on average until the component was back", f, k.n, (k.took / time.Duration(k.n)).Round(time.Millisecond))
		if k.recN > 0 {
			fmt.Fprintf(&b, ", first 250 %s after that", (k.rec / time.Duration(k.recN)).Round(time.Millisecond))
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "by phase (a fault and %s after it):\n", settle)
	for i := range s.Phases {
		p := &s.Phases[i]
		fmt.Fprintf(&b, "  %-15s 250: %d, 4xx: %d, 5xx: %d, no reply: %d, connection errors: %d\n",
			phaseName(i), p.Acked, sum(p.Tempfails), p.permfails(), p.NoReply, sum(p.ConnErrs))
	}
	if len(s.Faults) > 0 {
		b.WriteString("fault log:\n")
		start := s.Faults[0].Start
		for _, ev := range s.Faults {
			rec := "no 250 after it"
			if ev.Recovered >= 0 {
				rec = "next 250 after " + ev.Recovered.Round(time.Millisecond).String()
			}
			fmt.Fprintf(&b, "  +%-8s %-15s %-8s %s%s", ev.Start.Sub(start).Round(100*time.Millisecond), ev.Kind, ev.Took.Round(time.Millisecond), rec, detail(ev.Detail))
			if ev.Err != nil {
				fmt.Fprintf(&b, " ERROR: %v", ev.Err)
			}
			b.WriteString("\n")
		}
	}
	for _, p := range s.Problems {
		fmt.Fprintf(&b, "problem: %s\n", p)
	}
	if s.LogPath != "" {
		fmt.Fprintf(&b, "lsmtp log kept at %s\n", s.LogPath)
	}
	if s.Failed() {
		b.WriteString("RESULT: FAIL\n")
	} else {
		b.WriteString("RESULT: PASS (lost 0)\n")
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

func (s *Summary) String() string {
	var b strings.Builder
	s.WriteTo(&b)
	return b.String()
}

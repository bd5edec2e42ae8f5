package bench

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"
)

// A Section is a part of the report measured apart from the suite's
// rows (the factor table, the side-by-side comparison): the suite
// includes its Markdown, and the section's own command writes it alone.
type Section interface {
	// Markdown is the section, starting with a level-2 heading.
	Markdown() string
}

// WriteSection puts a section into the file at path between markers
// named name, replacing what an earlier run put there and keeping the
// rest of the file; a file without those markers gets the section at its
// end. Path "-" writes the section to standard output.
func WriteSection(path, name string, s Section) error {
	md := s.Markdown()
	if path == "-" {
		_, err := os.Stdout.WriteString(md)
		return err
	}
	begin := fmt.Sprintf("<!-- lsmtp-bench %s: written by the command, do not edit -->\n", name)
	end := fmt.Sprintf("<!-- end of lsmtp-bench %s -->\n", name)
	block := begin + md + end
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	text := string(old)
	if i := strings.Index(text, begin); i >= 0 {
		if j := strings.Index(text[i:], end); j >= 0 {
			return os.WriteFile(path, []byte(text[:i]+block+text[i+j+len(end):]), 0o644)
		}
	}
	if text != "" && !strings.HasSuffix(text, "\n\n") {
		text = strings.TrimRight(text, "\n") + "\n\n"
	}
	return os.WriteFile(path, []byte(text+block), 0o644)
}

// spread is the median, minimum and maximum of a sample.
type spread struct {
	N             int
	Med, Min, Max float64
}

func spreadOf(v []float64) spread {
	if len(v) == 0 {
		return spread{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{N: len(s), Med: med, Min: s[0], Max: s[len(s)-1]}
}

// format writes the median and, with more than one value, the range:
// "0.061 (0.059–0.064)".
func (s spread) format(f func(float64) string) string {
	if s.N == 0 {
		return "–"
	}
	if s.N == 1 || f(s.Min) == f(s.Max) {
		return f(s.Med)
	}
	return fmt.Sprintf("%s (%s–%s)", f(s.Med), f(s.Min), f(s.Max))
}

func fmt3(v float64) string { return fmt.Sprintf("%.3f", v) }
func fmt4(v float64) string { return fmt.Sprintf("%.4f", v) }
func fmt1(v float64) string { return fmt.Sprintf("%.1f", v) }
func fmt2(v float64) string { return fmt.Sprintf("%.2f", v) }

// kilo writes a rate in thousands: "15.4k".
func kilo(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%.1fk", v/1000)
	}
	return fmt.Sprintf("%.0f", v)
}

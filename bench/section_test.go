package bench

import (
	"os"
	"path/filepath"
	"testing"
)

type fixedSection string

func (s fixedSection) Markdown() string { return string(s) }

func TestWriteSectionReplacesOnlyItsOwnBlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.md")
	if err := os.WriteFile(path, []byte("# intro\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name, md string
		want     string
	}{
		{"factors", "## F1\n", "# intro\n\n" +
			"<!-- lsmtp-bench factors: written by the command, do not edit -->\n## F1\n<!-- end of lsmtp-bench factors -->\n"},
		{"peers", "## P1\n", "# intro\n\n" +
			"<!-- lsmtp-bench factors: written by the command, do not edit -->\n## F1\n<!-- end of lsmtp-bench factors -->\n\n" +
			"<!-- lsmtp-bench peers: written by the command, do not edit -->\n## P1\n<!-- end of lsmtp-bench peers -->\n"},
		{"factors", "## F2\nmore\n", "# intro\n\n" +
			"<!-- lsmtp-bench factors: written by the command, do not edit -->\n## F2\nmore\n<!-- end of lsmtp-bench factors -->\n\n" +
			"<!-- lsmtp-bench peers: written by the command, do not edit -->\n## P1\n<!-- end of lsmtp-bench peers -->\n"},
	}
	for i, st := range steps {
		if err := WriteSection(path, st.name, fixedSection(st.md)); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != st.want {
			t.Fatalf("step %d (%s): file is\n%q\nwant\n%q", i, st.name, got, st.want)
		}
	}
}

func TestWriteSectionCreatesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.md")
	if err := WriteSection(path, "peers", fixedSection("## P\n")); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	want := "<!-- lsmtp-bench peers: written by the command, do not edit -->\n## P\n<!-- end of lsmtp-bench peers -->\n"
	if string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestSpread(t *testing.T) {
	tests := []struct {
		in   []float64
		want spread
		text string
	}{
		{nil, spread{}, "–"},
		{[]float64{2}, spread{1, 2, 2, 2}, "2.000"},
		{[]float64{3, 1, 2}, spread{3, 2, 1, 3}, "2.000 (1.000–3.000)"},
		{[]float64{4, 1, 2, 3}, spread{4, 2.5, 1, 4}, "2.500 (1.000–4.000)"},
		{[]float64{0.0601, 0.0604}, spread{2, 0.06025, 0.0601, 0.0604}, "0.060"}, // equal when rounded: no range
	}
	for _, tt := range tests {
		got := spreadOf(tt.in)
		if got != tt.want {
			t.Errorf("spreadOf(%v) = %+v, want %+v", tt.in, got, tt.want)
		}
		if s := got.format(fmt3); s != tt.text {
			t.Errorf("spreadOf(%v).format = %q, want %q", tt.in, s, tt.text)
		}
	}
}

func TestProcSyscallsOfThisProcess(t *testing.T) {
	a, ok := ProcSyscalls(0)
	if !ok {
		t.Skip("/proc/self/io not readable here")
	}
	f, err := os.CreateTemp(t.TempDir(), "io")
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := f.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	b, _ := ProcSyscalls(0)
	if b-a < 10 {
		t.Fatalf("10 writes counted as %d system calls", b-a)
	}
}

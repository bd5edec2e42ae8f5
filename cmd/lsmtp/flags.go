package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Every option is a flag --name and an environment variable LSMTP_NAME
// (upper case, dashes as underscores). A flag given on the command line
// wins over the variable, which wins over the default.

// listFlag is a repeatable flag; its variable holds a comma-separated list.
type listFlag struct {
	values []string
	set    bool // set on the command line: the first value replaces the default
}

func (l *listFlag) String() string { return strings.Join(l.values, ",") }

func (l *listFlag) Set(v string) error {
	if !l.set {
		l.values, l.set = nil, true
	}
	l.values = append(l.values, v)
	return nil
}

// sizeFlag accepts plain octets or a K, M, G suffix (powers of 1024).
type sizeFlag struct{ n int64 }

func (s *sizeFlag) String() string { return strconv.FormatInt(s.n, 10) }

func (s *sizeFlag) Set(v string) error {
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	s.n = n
	return nil
}

func parseSize(v string) (int64, error) {
	mult := int64(1)
	t := strings.ToUpper(strings.TrimSpace(v))
	t = strings.TrimSuffix(t, "IB")
	t = strings.TrimSuffix(t, "B")
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, t[:len(t)-1]
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (octets, or with K, M, G)", v)
	}
	return n * mult, nil
}

// repeatable names the flags that may be given more than once; their
// variables hold comma-separated lists.
var repeatable = map[string]bool{"listen": true, "amqp-url": true}

// envName is the variable that stands for a flag.
func envName(flagName string) string {
	return "LSMTP_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// applyEnv sets every flag not given on the command line from its
// variable, if that is set.
func applyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		v, ok := os.LookupEnv(envName(f.Name))
		if !ok {
			return
		}
		if repeatable[f.Name] {
			// A list: each item as if its flag had been repeated (the
			// first Set replaces the default).
			for _, item := range strings.Split(v, ",") {
				if item = strings.TrimSpace(item); item != "" {
					if e := f.Value.Set(item); e != nil {
						err = fmt.Errorf("%s: %w", envName(f.Name), e)
						return
					}
				}
			}
			return
		}
		if e := f.Value.Set(v); e != nil {
			err = fmt.Errorf("%s=%q: %w", envName(f.Name), v, e)
		}
	})
	return err
}

package policy

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxDomain is the longest domain RFC 5321 §4.5.3.1.2 allows; a recipient
// with a longer one is refused without a lookup.
const maxDomain = 255

// domainSet holds RecipientDomains, ASCII-lower-cased: exact names, and
// parents written with their leading dot (".example.com") so that a
// recipient domain's suffixes can be looked up as they are.
type domainSet struct {
	exact   map[string]struct{}
	parents map[string]struct{}
}

func newDomainSet(domains []string) (domainSet, error) {
	s := domainSet{exact: make(map[string]struct{}), parents: make(map[string]struct{})}
	for i, d := range domains {
		if err := checkDomainPattern(d); err != nil {
			return domainSet{}, fmt.Errorf("policy: RecipientDomains[%d]: %q: %v", i, d, err)
		}
		d = asciiLower(d)
		if d[0] == '.' {
			s.parents[d] = struct{}{}
		} else {
			s.exact[d] = struct{}{}
		}
	}
	return s, nil
}

// checkDomainPattern accepts a domain name, optionally with a leading dot:
// dot-separated labels of 1-63 octets made of ASCII letters, digits and
// hyphens (not first or last, RFC 5321 §4.1.2 sub-domain), or of UTF-8
// (U-labels, RFC 6531 §3.3), 255 octets at most.
func checkDomainPattern(d string) error {
	name := strings.TrimPrefix(d, ".")
	switch {
	case d == "":
		return fmt.Errorf("empty")
	case strings.HasPrefix(d, "*"):
		return fmt.Errorf(`write subdomains as ".example.com", not "*.example.com"`)
	case strings.HasPrefix(d, "["):
		return fmt.Errorf("address literals are not domains")
	case name == "":
		return fmt.Errorf("no name after the dot")
	case len(name) > maxDomain:
		return fmt.Errorf("longer than %d octets", maxDomain)
	case !utf8.ValidString(name):
		return fmt.Errorf("not valid UTF-8")
	}
	for label := range strings.SplitSeq(name, ".") {
		switch {
		case label == "":
			return fmt.Errorf("empty label (leading, trailing or double dot)")
		case len(label) > 63:
			return fmt.Errorf("label %q is longer than 63 octets", label)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("label %q starts or ends with '-'", label)
		}
		for _, c := range []byte(label) {
			if !(c >= 0x80 || c == '-' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
				return fmt.Errorf("label %q has the character %q", label, c)
			}
		}
	}
	return nil
}

func asciiLower(s string) string {
	b := []byte(s)
	lowerASCII(b)
	return string(b)
}

func lowerASCII(b []byte) {
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
}

// allowed looks up the domain of addr: exactly, then each parent
// (".a.example.com", ".example.com", ".com") for the subdomain entries.
func (s *domainSet) allowed(addr []byte) bool {
	at := bytes.LastIndexByte(addr, '@')
	if at < 0 {
		// RFC 5321 §4.5.1: "Postmaster" (any case) without a domain
		// must be accepted.
		return len(addr) == len("postmaster") && bytes.EqualFold(addr, []byte("postmaster"))
	}
	d := addr[at+1:]
	if len(d) == 0 || len(d) > maxDomain {
		return false
	}
	var buf [maxDomain]byte
	n := copy(buf[:], d)
	lower := buf[:n]
	lowerASCII(lower)
	// The map index with a string conversion does not allocate.
	if _, ok := s.exact[string(lower)]; ok {
		return true
	}
	if len(s.parents) == 0 {
		return false
	}
	for i := 1; i < len(lower); i++ {
		if lower[i] == '.' {
			if _, ok := s.parents[string(lower[i:])]; ok {
				return true
			}
		}
	}
	return false
}

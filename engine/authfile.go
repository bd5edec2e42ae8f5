package engine

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// The auth file (--auth-file): one "user:hash" per line; blank lines and
// lines starting with # are skipped. A hash is bcrypt ($2a$, $2b$, $2y$)
// or an argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$key).
// `lsmtp auth hash` makes either.

// credentials is one parsed auth file.
type credentials struct {
	users map[string]passwordHash
	// decoy is checked for an unknown user, so that the reply takes as
	// long as for a known one and does not tell which users exist.
	decoy passwordHash
}

// passwordHash is one user's hash, parsed once at load.
type passwordHash struct {
	bcrypt []byte // a bcrypt hash as written, or nil
	argon  *argonHash
}

type argonHash struct {
	time, memory uint32
	threads      uint8
	salt, key    []byte
}

func (h passwordHash) matches(pass []byte) bool {
	switch {
	case h.bcrypt != nil:
		return bcrypt.CompareHashAndPassword(h.bcrypt, pass) == nil
	case h.argon != nil:
		a := h.argon
		key := argon2.IDKey(pass, a.salt, a.time, a.memory, a.threads, uint32(len(a.key)))
		return subtle.ConstantTimeCompare(key, a.key) == 1
	}
	return false
}

// loadAuthFile reads and parses an auth file; the errors name the line.
func loadAuthFile(name string) (*credentials, error) {
	data, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	c := &credentials{users: make(map[string]passwordHash)}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return nil, fmt.Errorf("auth file %s:%d: want user:hash", name, n)
		}
		if len(user) > maxAuthUser {
			return nil, fmt.Errorf("auth file %s:%d: user name longer than %d octets", name, n, maxAuthUser)
		}
		if _, dup := c.users[user]; dup {
			return nil, fmt.Errorf("auth file %s:%d: user %q given twice", name, n, user)
		}
		h, err := parseHash(hash)
		if err != nil {
			return nil, fmt.Errorf("auth file %s:%d: user %q: %w", name, n, user, err)
		}
		c.users[user] = h
		if c.decoy.bcrypt == nil && c.decoy.argon == nil {
			c.decoy = h
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth file %s: %w", name, err)
	}
	return c, nil
}

// parseHash reads a bcrypt hash or an argon2id PHC string.
func parseHash(h string) (passwordHash, error) {
	switch {
	case strings.HasPrefix(h, "$2a$"), strings.HasPrefix(h, "$2b$"), strings.HasPrefix(h, "$2y$"):
		if _, err := bcrypt.Cost([]byte(h)); err != nil {
			return passwordHash{}, fmt.Errorf("bcrypt hash: %w", err)
		}
		return passwordHash{bcrypt: []byte(h)}, nil
	case strings.HasPrefix(h, "$argon2id$"):
		a, err := parseArgon2id(h)
		if err != nil {
			return passwordHash{}, fmt.Errorf("argon2id hash: %w", err)
		}
		return passwordHash{argon: a}, nil
	}
	return passwordHash{}, errors.New("not a bcrypt ($2a$, $2b$, $2y$) or argon2id ($argon2id$) hash")
}

// parseArgon2id reads $argon2id$v=19$m=65536,t=3,p=4$<salt>$<key>, salt
// and key in unpadded standard base64 (the PHC string format).
func parseArgon2id(h string) (*argonHash, error) {
	parts := strings.Split(h, "$")
	if len(parts) != 6 || parts[2] != "v=19" {
		return nil, errors.New("want $argon2id$v=19$m=M,t=T,p=P$salt$key")
	}
	a := &argonHash{}
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("parameter %q", kv)
		}
		switch k {
		case "m":
			a.memory = uint32(n)
		case "t":
			a.time = uint32(n)
		case "p":
			if n > 255 {
				return nil, fmt.Errorf("parameter %q", kv)
			}
			a.threads = uint8(n)
		default:
			return nil, fmt.Errorf("parameter %q", kv)
		}
	}
	// Bounds that keep one check from taking the machine: 4 GiB, 100
	// passes.
	if a.memory < 8 || a.memory > 4<<20 || a.time < 1 || a.time > 100 || a.threads < 1 {
		return nil, errors.New("parameters out of bounds (m 8..4194304 KiB, t 1..100, p 1..255)")
	}
	var err error
	if a.salt, err = base64.RawStdEncoding.DecodeString(parts[4]); err != nil || len(a.salt) < 8 {
		return nil, errors.New("salt: want 8 octets or more of unpadded base64")
	}
	if a.key, err = base64.RawStdEncoding.DecodeString(parts[5]); err != nil || len(a.key) < 16 {
		return nil, errors.New("key: want 16 octets or more of unpadded base64")
	}
	return a, nil
}

// HashPassword returns a hash for the auth file: scheme "bcrypt" (cost
// 12) or "argon2id" (RFC 9106 §4's second recommended option: m=64 MiB,
// t=3, p=4).
func HashPassword(pass []byte, scheme string) (string, error) {
	switch scheme {
	case "bcrypt", "":
		h, err := bcrypt.GenerateFromPassword(pass, 12)
		return string(h), err
	case "argon2id":
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return "", err
		}
		const t, m, p = 3, 64 << 10, 4
		key := argon2.IDKey(pass, salt, t, m, p, 32)
		return fmt.Sprintf("$argon2id$v=19$m=%d,t=%d,p=%d$%s$%s", m, t, p,
			base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
	}
	return "", fmt.Errorf("scheme %q: want bcrypt or argon2id", scheme)
}

// authStore holds the credentials in force; like the certificate, the
// file is looked at again at most once a minute and on Reload.
type authStore struct {
	stats *Stats
	log   interface{ Warn(string, ...any) }

	mu        sync.Mutex // held while loading
	name      string     // guarded by mu
	mod       time.Time  // guarded by mu
	cur       atomic.Pointer[credentials]
	nextCheck atomic.Int64 // Unix ns of the next look at the file
}

func (a *authStore) loaded() bool { return a.cur.Load() != nil }

// setLog sets the logger of reload failures under mu, as certStore's.
func (a *authStore) setLog(log interface{ Warn(string, ...any) }) {
	a.mu.Lock()
	a.log = log
	a.mu.Unlock()
}

// load reads the file; on failure the credentials in force stay.
func (a *authStore) load(name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nextCheck.Store(time.Now().Add(fileCheckInterval).UnixNano())
	if name == "" {
		a.name = ""
		a.cur.Store(nil)
		return nil
	}
	mod := modTime(name)
	c, err := loadAuthFile(name)
	if err != nil {
		a.stats.TLS.AuthFileReloadFailures.Add(1)
		if a.log != nil && a.cur.Load() != nil {
			a.log.Warn("auth file not reloaded; the previous one stays in force", "file", name, "err", err)
		}
		return err
	}
	a.name, a.mod = name, mod
	a.cur.Store(c)
	return nil
}

// check verifies a user's password; sem bounds the hashes computed at
// once. It runs on a TLS goroutine only: a hash takes milliseconds.
func (a *authStore) check(user, pass []byte, sem chan struct{}) (bool, error) {
	now := time.Now()
	if next := a.nextCheck.Load(); now.UnixNano() >= next && a.nextCheck.CompareAndSwap(next, now.Add(fileCheckInterval).UnixNano()) {
		a.mu.Lock()
		name, mod := a.name, a.mod
		a.mu.Unlock()
		if name != "" && !modTime(name).Equal(mod) {
			_ = a.load(name)
		}
	}
	c := a.cur.Load()
	if c == nil {
		return false, errors.New("no auth file")
	}
	h, known := c.users[string(user)]
	if !known {
		h = c.decoy
	}
	sem <- struct{}{}
	ok := h.matches(pass)
	<-sem
	return ok && known, nil
}

// Package queueid makes message queue IDs: 26 characters of Crockford
// base32 that sort by creation time and stay unique across restarts and
// across nodes without coordination.
//
// Layout (128 bits, most significant first):
//
//	48 bits  milliseconds since the Unix epoch
//	32 bits  node: random per process start
//	48 bits  sequence: random start, +1 per ID
//
// Two IDs from one process never collide (the sequence wraps only after
// 2^48 IDs). Two processes collide only if they draw the same 32-bit node
// and sequence window in the same millisecond. Within one millisecond IDs
// of one process sort by the sequence, so they sort in creation order.
package queueid

import (
	"crypto/rand"
	"encoding/binary"
	"sync/atomic"
	"time"
)

// Len is the length of an ID in characters.
const Len = 26

// crockford is Crockford's base32 alphabet: no I, L, O, U, so an ID read
// aloud or retyped from a log is unambiguous, and byte order is sort order.
const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// Generator makes IDs. The zero value is not usable; use NewGenerator.
type Generator struct {
	node uint32
	seq  atomic.Uint64
}

// NewGenerator draws a random node and sequence start.
func NewGenerator() *Generator {
	var b [12]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux (Go 1.24+)
	g := &Generator{node: binary.BigEndian.Uint32(b[:4])}
	g.seq.Store(binary.BigEndian.Uint64(b[4:]) & (1<<48 - 1))
	return g
}

// Append appends a new ID made at time now to dst.
func (g *Generator) Append(dst []byte, now time.Time) []byte {
	ms := uint64(now.UnixMilli()) & (1<<48 - 1)
	seq := g.seq.Add(1) & (1<<48 - 1)
	hi := ms<<16 | uint64(g.node>>16)
	lo := uint64(g.node&0xffff)<<48 | seq
	return appendBase32(dst, hi, lo)
}

// New returns a new ID made at time now.
func (g *Generator) New(now time.Time) string {
	var b [Len]byte
	return string(g.Append(b[:0], now))
}

// appendBase32 writes the 128-bit value hi:lo as 26 base32 digits, the
// first digit carrying the top 3 bits (26*5 = 130 bits).
func appendBase32(dst []byte, hi, lo uint64) []byte {
	var out [Len]byte
	for i := Len - 1; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return append(dst, out[:]...)
}

// Time returns the creation time encoded in a valid ID, and false for
// anything that is not one.
func Time(id string) (time.Time, bool) {
	if len(id) != Len {
		return time.Time{}, false
	}
	var hi, lo uint64
	for i := 0; i < Len; i++ {
		v := decode(id[i])
		if v < 0 {
			return time.Time{}, false
		}
		hi = hi<<5 | lo>>59
		lo = lo<<5 | uint64(v)
	}
	return time.UnixMilli(int64(hi >> 16)), true
}

func decode(c byte) int {
	for i := 0; i < len(crockford); i++ {
		if crockford[i] == c {
			return i
		}
	}
	return -1
}

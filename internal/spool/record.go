package spool

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"time"

	"github.com/valyala/bytebufferpool"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// A segment starts with a header:
//
//	magic   4  "LSS2"
//	nonce   8  random, chosen when the segment is created
//
// then records, each:
//
//	magic   4  "LSP2": finds the next record after a damaged one
//	length  4  octets of the payload
//	crc     4  CRC-32C of the segment's nonce (8), the record's own
//	           offset in the segment (4), length and payload
//	payload    version 2, received 8 (Unix ns), spooled 8 (Unix ns),
//	           queue ID (2+n), sender (4+n), recipients 4 + (4+n) each,
//	           client IP (2+n), client port 4, HELO (2+n), SIZE= 8,
//	           BODY= 1, SMTPUTF8 1, TLS version (2+n), TLS cipher (2+n),
//	           AUTH user (2+n), then the body (sink.Message.Data) to the
//	           end of the payload
//
// All integers little-endian. The payload is sink.Message's fields, not
// an AMQP frame, so that any sink can publish a record again with the
// contract it publishes the live message with.
//
// The nonce and offset are in the CRC but not stored: a record is valid
// only at the offset it was written at, in the segment it was written
// to. So when resync looks for the next record after a damaged one, a
// record-shaped string inside a message body (one a sender built to
// choose its own envelope) fails its CRC: the sender cannot know the
// nonce.
//
// The format of the first release (no segment header, "LSP1", version 1
// payloads without the TLS and AUTH fields) is refused at Open with an
// error naming the segment; it was never in use for long.
const (
	headerSize    = 12
	segHeaderSize = 12
	recordVersion = 2
	// maxPayload bounds a record's length field, so that a damaged one
	// is not taken for a record of gigabytes: the largest message lsmtp
	// accepts is far below it.
	maxPayload = 1 << 30
)

var (
	magic    = [4]byte{'L', 'S', 'P', '2'}
	segMagic = [4]byte{'L', 'S', 'S', '2'}
	// oldMagic starts a segment of the first format.
	oldMagic = [4]byte{'L', 'S', 'P', '1'}
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt: the record fails its checks.
var ErrCorrupt = errors.New("spool: corrupt record")

// recordSize is the octets m takes on disk.
func recordSize(m *sink.Message) int {
	n := headerSize + 1 + 8 + 8 + 2 + len(m.QueueID) + 4 + len(m.Sender) + 4
	for _, r := range m.Recipients {
		n += 4 + len(r)
	}
	n += 2 + len(m.ClientIP) + 4 + 2 + len(m.Helo) + 8 + 1 + 1
	n += 2 + len(m.TLSVersion) + 2 + len(m.TLSCipher) + 2 + min(len(m.AuthUser), 0xffff) + 4
	if m.Data != nil {
		n += m.Data.Len()
	}
	return n
}

// appendSegHeader appends the header of a segment with nonce.
func appendSegHeader(dst []byte, nonce uint64) []byte {
	dst = append(dst, segMagic[:]...)
	return binary.LittleEndian.AppendUint64(dst, nonce)
}

// appendRecord appends m's record, spooled at now, to dst; it will be at
// offset off of the segment with nonce.
func appendRecord(dst []byte, m *sink.Message, now time.Time, nonce uint64, off uint32) []byte {
	start := len(dst)
	dst = append(dst, magic[:]...)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0) // length and crc, below
	dst = append(dst, recordVersion)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Received.UnixNano()))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(now.UnixNano()))
	dst = appendStr16(dst, m.QueueID)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(m.Sender)))
	dst = append(dst, m.Sender...)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(m.Recipients)))
	for _, r := range m.Recipients {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(r)))
		dst = append(dst, r...)
	}
	dst = appendStr16(dst, m.ClientIP)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(m.ClientPort))
	dst = appendStr16(dst, string(m.Helo))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Size))
	dst = append(dst, byte(m.Body))
	if m.SMTPUTF8 {
		dst = append(dst, 1)
	} else {
		dst = append(dst, 0)
	}
	dst = appendStr16(dst, m.TLSVersion)
	dst = appendStr16(dst, m.TLSCipher)
	dst = appendStr16(dst, string(m.AuthUser))
	// The trace fields at the head of the body (sink.Limits.TraceFields):
	// a copy per domain rewrites them for its own recipients.
	dst = binary.LittleEndian.AppendUint32(dst, uint32(m.TraceLen))
	if m.Data != nil {
		dst = append(dst, m.Data.B...)
	}
	n := len(dst) - start - headerSize
	binary.LittleEndian.PutUint32(dst[start+4:], uint32(n))
	binary.LittleEndian.PutUint32(dst[start+8:], recordCRC(nonce, off, dst[start+4:start+8], dst[start+headerSize:]))
	return dst
}

func appendStr16(dst []byte, s string) []byte {
	if len(s) > 0xffff {
		s = s[:0xffff] // queue IDs, IPs and HELO arguments are far shorter
	}
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

func recordCRC(nonce uint64, off uint32, length, payload []byte) uint32 {
	var where [12]byte
	binary.LittleEndian.PutUint64(where[:], nonce)
	binary.LittleEndian.PutUint32(where[8:], off)
	c := crc32.Update(crc32.Checksum(where[:], castagnoli), castagnoli, length)
	return crc32.Update(c, castagnoli, payload)
}

// check reports the length of the valid record at the start of b, which
// is at offset off of the segment with nonce, or ErrCorrupt: a wrong
// magic, a length past b or maxPayload, a CRC that does not match (a
// record moved, or from another segment, included). A record cut short
// by the end of b is corrupt too.
func check(b []byte, nonce uint64, off uint32) (int, error) {
	if len(b) < headerSize || [4]byte(b[:4]) != magic {
		return 0, ErrCorrupt
	}
	n := int(binary.LittleEndian.Uint32(b[4:]))
	if n > maxPayload || headerSize+n > len(b) {
		return 0, ErrCorrupt
	}
	if recordCRC(nonce, off, b[4:8], b[headerSize:headerSize+n]) != binary.LittleEndian.Uint32(b[8:]) {
		return 0, ErrCorrupt
	}
	return headerSize + n, nil
}

// decoder reads the payload of a checked record.
type decoder struct {
	b   []byte
	bad bool
}

func (d *decoder) take(n int) []byte {
	if d.bad || n > len(d.b) {
		d.bad = true
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() byte {
	if v := d.take(1); v != nil {
		return v[0]
	}
	return 0
}
func (d *decoder) u16() int {
	if v := d.take(2); v != nil {
		return int(binary.LittleEndian.Uint16(v))
	}
	return 0
}
func (d *decoder) u32() int {
	if v := d.take(4); v != nil {
		return int(binary.LittleEndian.Uint32(v))
	}
	return 0
}
func (d *decoder) u64() uint64 {
	if v := d.take(8); v != nil {
		return binary.LittleEndian.Uint64(v)
	}
	return 0
}

// decode fills m from the checked record rec; m.Data, when data is set,
// is a pooled buffer holding the body. It returns the spool time.
func decode(rec []byte, m *sink.Message, data bool) (time.Time, error) {
	d := decoder{b: rec[headerSize:]}
	if d.u8() != recordVersion {
		return time.Time{}, ErrCorrupt
	}
	m.Received = time.Unix(0, int64(d.u64()))
	spooled := time.Unix(0, int64(d.u64()))
	m.QueueID = string(d.take(d.u16()))
	m.Sender = d.take(d.u32())
	n := d.u32()
	if n > len(d.b)/4 {
		return time.Time{}, ErrCorrupt
	}
	m.Recipients = make([][]byte, 0, n)
	for i := 0; i < n && !d.bad; i++ {
		m.Recipients = append(m.Recipients, d.take(d.u32()))
	}
	m.ClientIP = string(d.take(d.u16()))
	m.ClientPort = d.u32()
	m.Helo = d.take(d.u16())
	m.Size = int64(d.u64())
	m.Body = sink.BodyType(d.u8())
	m.SMTPUTF8 = d.u8() == 1
	m.TLSVersion = string(d.take(d.u16()))
	m.TLSCipher = string(d.take(d.u16()))
	m.AuthUser = nil
	if u := d.take(d.u16()); len(u) > 0 {
		m.AuthUser = u
	}
	m.TraceLen = d.u32()
	if d.bad || m.TraceLen > len(d.b) {
		return time.Time{}, ErrCorrupt
	}
	m.Data = nil
	if data {
		m.Data = bytebufferpool.Get()
		m.Data.Write(d.b)
	}
	m.Done = nil
	return spooled, nil
}

// entryOf reads what the queue needs from the checked record rec: its
// received time and queue ID, without decoding the rest.
func entryOf(rec []byte) (time.Time, string, error) {
	d := decoder{b: rec[headerSize:]}
	if d.u8() != recordVersion {
		return time.Time{}, "", ErrCorrupt
	}
	received := int64(d.u64())
	d.u64() // spooled
	id := d.take(d.u16())
	if d.bad {
		return time.Time{}, "", ErrCorrupt
	}
	return time.Unix(0, received), string(id), nil
}

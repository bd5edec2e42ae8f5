// Package spool is lsmtp's durable local spool: an append-only log of
// messages a sink could not hand on now, fsynced in groups, each record
// kept until the sink says it was delivered.
//
// The directory holds numbered segments (00000001.seg, ...), each with an
// acknowledgement file beside it (00000001.ack) listing the offsets of its
// records that were delivered, and quarantine/ with the damaged regions
// found. Records are only appended, to the newest segment; a segment is
// removed when every record in it is acknowledged. A record carries a
// CRC-32C, so that a record torn by a crash or changed on disk is found
// at start (or when it is read), counted, copied to quarantine/ with one
// log line, and skipped: the records after it are found by their magic.
//
// One process at a time: Open takes an exclusive flock(2) on LOCK.
package spool

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// Defaults.
const (
	DefaultSegmentSize = 64 << 20
	// DefaultGroupWindow is how long the writer waits after the first
	// record of a group for others before it writes and fsyncs them all.
	// Records that arrive while an fsync runs join the next group anyway;
	// the window adds the sessions finishing just after.
	DefaultGroupWindow = 500 * time.Microsecond
	// maxGroupBytes ends a group early: one write of at most this much
	// (or one record, if larger).
	maxGroupBytes = 16 << 20
	// writeLogEvery is the least time between two lines about failed
	// writes.
	writeLogEvery = 5 * time.Second
)

// Errors.
var (
	// ErrFull: the record would take the spool past Config.MaxBytes.
	ErrFull = errors.New("spool: full")
	// ErrClosed: Append after Close.
	ErrClosed = errors.New("spool: closed")
)

// Config configures a spool.
type Config struct {
	Dir string
	// MaxBytes bounds the octets of the segments on disk (records not yet
	// removed with their segment included) plus those being written.
	MaxBytes int64
	// SegmentSize: a new segment is started when the newest reaches it.
	SegmentSize int64
	// GroupWindow: see DefaultGroupWindow. 0 for the default; negative
	// for none (a group is then what queued while the last fsync ran).
	GroupWindow time.Duration
	Logger      *slog.Logger
}

// Loc names a record: its segment and offset.
type Loc struct {
	Seg uint32
	Off uint32
	Len uint32 // octets on disk, header included
}

// Entry is a record found at Open, not yet acknowledged.
type Entry struct {
	Loc      Loc
	QueueID  string
	Received time.Time
}

// Stats is a snapshot of the spool's counters.
type Stats struct {
	Records   int64  // records not yet acknowledged
	Bytes     int64  // their octets on disk
	DiskBytes int64  // octets of the segments on disk
	Appended  uint64 // records written and fsynced, since Open
	Acked     uint64 // records acknowledged, since Open
	Fsyncs    uint64 // fsyncs of segments, since Open
	Failed    uint64 // records that could not be written (full, I/O error)
	Corrupt   uint64 // damaged regions found (at Open or on a read) and quarantined
}

// Spool is an open spool directory. Append, Read and Ack are safe for
// concurrent use.
type Spool struct {
	cfg  Config
	log  *slog.Logger
	lock *os.File

	mu     sync.RWMutex // closed; held (read) across a send on reqs
	closed bool
	reqs   chan appendReq
	stop   chan struct{}
	done   chan struct{}

	// reserved: octets of the segments on disk plus the records queued
	// for the writer, against MaxBytes.
	reserved atomic.Int64

	filesMu sync.Mutex
	files   map[uint32]*os.File // open segments, for Read
	segs    map[uint32]*segment // under filesMu; live counts changed by the writer only

	ackMu   sync.Mutex
	acks    []Loc // acknowledged, not yet written to their .ack files
	ackKick chan struct{}

	writeFailing atomic.Bool // the last group could not be written

	// The writer's own state.
	lastWriteLog time.Time
	failedGroups int
	active       *os.File
	activeSeg    uint32
	activeOff    int64
	activeNonce  uint64
	buf          []byte

	records, bytes, diskBytes                       atomic.Int64
	appended, acked, fsyncs, failed, corruptRegions atomic.Uint64
}

type segment struct {
	live  int   // records not acknowledged
	size  int64 // octets on disk
	nonce uint64
	ack   *os.File
}

type appendReq struct {
	m    *sink.Message
	size int
	done func(Loc, error)
}

func segName(dir string, n uint32) string { return filepath.Join(dir, fmt.Sprintf("%08d.seg", n)) }
func ackName(dir string, n uint32) string { return filepath.Join(dir, fmt.Sprintf("%08d.ack", n)) }

// Open opens (creating it if needed) the spool in cfg.Dir, checks every
// record and returns those not yet acknowledged, oldest first.
func Open(cfg Config) (*Spool, []Entry, error) {
	if cfg.SegmentSize <= 0 {
		cfg.SegmentSize = DefaultSegmentSize
	}
	if cfg.GroupWindow == 0 {
		cfg.GroupWindow = DefaultGroupWindow
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "quarantine"), 0o700); err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(cfg.Dir, "LOCK"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		return nil, nil, fmt.Errorf("spool: %s is in use by another process: %w", cfg.Dir, err)
	}
	s := &Spool{
		cfg: cfg, log: cfg.Logger, lock: lock,
		reqs:    make(chan appendReq, 4096),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		files:   map[uint32]*os.File{},
		segs:    map[uint32]*segment{},
		ackKick: make(chan struct{}, 1),
	}
	entries, last, err := s.recover()
	if err != nil {
		s.closeFiles()
		lock.Close()
		return nil, nil, err
	}
	s.activeSeg = last // the next append opens last+1
	go s.writer()
	return s, entries, nil
}

// recover scans every segment, quarantines what is damaged, removes
// segments with nothing left, and returns the live records.
func (s *Spool) recover() ([]Entry, uint32, error) {
	nums, err := segments(s.cfg.Dir)
	if err != nil {
		return nil, 0, err
	}
	var entries []Entry
	var last uint32
	var buf []byte
	for _, n := range nums {
		last = max(last, n)
		live, size, nonce, err := scanSegment(s.cfg.Dir, n, &buf, func(e Entry, _ []byte) {
			entries = append(entries, e)
			s.bytes.Add(int64(e.Loc.Len))
		}, s.quarantine)
		if err != nil {
			return nil, 0, err
		}
		if live == 0 {
			os.Remove(segName(s.cfg.Dir, n))
			os.Remove(ackName(s.cfg.Dir, n))
			continue
		}
		f, err := os.Open(segName(s.cfg.Dir, n))
		if err != nil {
			return nil, 0, fmt.Errorf("spool: %w", err)
		}
		ack, err := os.OpenFile(ackName(s.cfg.Dir, n), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			f.Close()
			return nil, 0, fmt.Errorf("spool: %w", err)
		}
		s.files[n] = f
		s.segs[n] = &segment{live: live, size: size, nonce: nonce, ack: ack}
		s.diskBytes.Add(size)
	}
	// Acknowledgement files whose segment is gone.
	acks, _ := filepath.Glob(filepath.Join(s.cfg.Dir, "*.ack"))
	for _, a := range acks {
		var n uint32
		if _, err := fmt.Sscanf(filepath.Base(a), "%08d.ack", &n); err == nil && s.segs[n] == nil {
			os.Remove(a)
		}
	}
	s.records.Store(int64(len(entries)))
	s.reserved.Store(s.diskBytes.Load())
	return entries, last, nil
}

// segments lists the segment numbers in dir, in order.
func segments(dir string) ([]uint32, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var nums []uint32
	for _, name := range names {
		var n uint32
		if _, err := fmt.Sscanf(filepath.Base(name), "%08d.seg", &n); err == nil {
			nums = append(nums, n)
		}
	}
	sort.Slice(nums, func(i, j int) bool { return nums[i] < nums[j] })
	return nums, nil
}

// readAcks returns the acknowledged offsets of segment n. A torn last
// entry (a crash while appending it) or a damaged one is ignored: its
// record is delivered again, which at-least-once allows.
func readAcks(dir string, n uint32) map[uint32]bool {
	b, err := os.ReadFile(ackName(dir, n))
	if err != nil {
		return nil
	}
	acked := map[uint32]bool{}
	for ; len(b) >= ackEntrySize; b = b[ackEntrySize:] {
		if off, ok := parseAck(b); ok {
			acked[off] = true
		}
	}
	return acked
}

// scanSegment calls live for every valid record of segment n that is not
// acknowledged and bad for every damaged region; it returns the count of
// live records, the segment's size and its nonce.
// buf is reused from segment to segment.
func scanSegment(dir string, n uint32, buf *[]byte, live func(Entry, []byte), bad func(seg uint32, nonce uint64, off int, region []byte)) (int, int64, uint64, error) {
	data, err := readInto(segName(dir, n), buf)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("spool: %w", err)
	}
	switch {
	case len(data) >= 4 && [4]byte(data[:4]) == oldMagic:
		return 0, 0, 0, fmt.Errorf("spool: %s is in the format of lsmtp's first spool, which this release does not read: "+
			"deliver it with that release, or move it out of the directory", segName(dir, n))
	case len(data) < segHeaderSize:
		// Created, and the first group never reached the disk (a crash
		// before its fdatasync): nothing in it was answered 250.
		return 0, int64(len(data)), 0, nil
	case [4]byte(data[:4]) != segMagic:
		if bad != nil {
			bad(n, 0, 0, data)
		}
		return 0, int64(len(data)), 0, nil
	}
	nonce := binary.LittleEndian.Uint64(data[4:segHeaderSize])
	acked := readAcks(dir, n)
	count := 0
	for off := segHeaderSize; off < len(data); {
		size, err := check(data[off:], nonce, uint32(off))
		if err != nil {
			next := resync(data, off+1, nonce)
			if bad != nil {
				bad(n, nonce, off, data[off:next])
			}
			off = next
			continue
		}
		rec := data[off : off+size]
		if !acked[uint32(off)] {
			received, id, err := entryOf(rec)
			if err != nil {
				if bad != nil {
					bad(n, nonce, off, rec)
				}
			} else {
				count++
				live(Entry{Loc: Loc{Seg: n, Off: uint32(off), Len: uint32(size)}, QueueID: id, Received: received}, rec)
			}
		}
		off += size
	}
	return count, int64(len(data)), nonce, nil
}

// readInto reads the file name into *buf, growing it if need be.
func readInto(name string, buf *[]byte) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if int64(cap(*buf)) < fi.Size() {
		*buf = make([]byte, fi.Size())
	}
	data := (*buf)[:fi.Size()]
	k, err := io.ReadFull(f, data)
	if err == io.ErrUnexpectedEOF {
		err = nil // shorter than it was: a scan beside a writer
	}
	return data[:k], err
}

// resync returns the offset of the next valid record at or after from,
// or len(data). A candidate is valid only with this segment's nonce and
// its own offset in its CRC, so a record inside a message body is not one.
func resync(data []byte, from int, nonce uint64) int {
	for i := from; i+headerSize <= len(data); i++ {
		if [4]byte(data[i:i+4]) == magic {
			if _, err := check(data[i:], nonce, uint32(i)); err == nil {
				return i
			}
		}
	}
	return len(data)
}

// quarantine copies a damaged region aside, once: a region already
// quarantined by an earlier start is not counted or logged again. The
// name carries the segment's nonce, because segment numbers start again
// at 1 once the spool drained: a later segment 1 is a different file.
func (s *Spool) quarantine(seg uint32, nonce uint64, off int, region []byte) {
	name := filepath.Join(s.cfg.Dir, "quarantine", fmt.Sprintf("%08d-%016x-%010d.bad", seg, nonce, off))
	if _, err := os.Stat(name); err == nil {
		return
	}
	s.corruptRegions.Add(1)
	if err := os.WriteFile(name, region, 0o600); err != nil {
		s.log.Error("spool: damaged record skipped, and it cannot be copied aside", "segment", seg, "offset", off,
			"octets", len(region), "err", err)
		return
	}
	s.log.Error("spool: damaged record moved aside", "segment", seg, "offset", off, "octets", len(region), "file", name)
}

// Append writes m (its envelope and Data) to the spool and calls done
// with its location once it is fsynced, or with the error: ErrFull past
// MaxBytes (at once), ErrClosed, or the write's. m must stay unchanged
// until done. done runs on the spool's writer goroutine and must not
// block. Append waits only when thousands of records are queued for the
// disk.
func (s *Spool) Append(m *sink.Message, done func(Loc, error)) {
	size := recordSize(m)
	if s.reserved.Add(int64(size)) > s.cfg.MaxBytes {
		s.reserved.Add(-int64(size))
		s.failed.Add(1)
		done(Loc{}, ErrFull)
		return
	}
	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		s.reserved.Add(-int64(size))
		done(Loc{}, ErrClosed)
		return
	}
	s.reqs <- appendReq{m: m, size: size, done: done}
	s.mu.RUnlock()
}

// writer writes and fsyncs groups of records, and the acknowledgements.
func (s *Spool) writer() {
	defer close(s.done)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var group []appendReq
	for {
		group = group[:0]
		select {
		case r := <-s.reqs:
			group = append(group, r)
		case <-s.ackKick:
			s.flushAcks()
			continue
		case <-tick.C:
			s.flushAcks()
			continue
		case <-s.stop:
			// Close stopped new appends; write what is queued.
			for {
				select {
				case r := <-s.reqs:
					group = append(group, r)
					continue
				default:
				}
				break
			}
			if len(group) > 0 {
				s.writeGroup(group)
			}
			s.flushAcks()
			return
		}
		s.collect(&group)
		s.writeGroup(group)
		s.flushAcks()
	}
}

// collect adds to group what queued meanwhile and what arrives within
// the group window of the first.
func (s *Spool) collect(group *[]appendReq) {
	bytes := (*group)[0].size
	var timer <-chan time.Time
	if s.cfg.GroupWindow > 0 {
		t := time.NewTimer(s.cfg.GroupWindow)
		defer t.Stop()
		timer = t.C
	}
	for bytes < maxGroupBytes {
		select {
		case r := <-s.reqs:
			*group = append(*group, r)
			bytes += r.size
			continue
		default:
		}
		if timer == nil {
			return
		}
		select {
		case r := <-s.reqs:
			*group = append(*group, r)
			bytes += r.size
		case <-timer:
			return
		}
	}
}

// writeGroup writes group with one write and one fdatasync, then tells
// every record's done.
func (s *Spool) writeGroup(group []appendReq) {
	err := s.ensureActive()
	var locs []Loc
	if err == nil {
		s.buf = s.buf[:0]
		now := time.Now()
		locs = make([]Loc, len(group))
		for i, r := range group {
			if s.activeOff == 0 && i == 0 {
				s.buf = appendSegHeader(s.buf, s.activeNonce)
			}
			start := len(s.buf)
			s.buf = appendRecord(s.buf, r.m, now, s.activeNonce, uint32(s.activeOff)+uint32(start))
			locs[i] = Loc{Seg: s.activeSeg, Off: uint32(s.activeOff) + uint32(start), Len: uint32(len(s.buf) - start)}
		}
		// WriteAt, not Write: after a failed group is cut back below,
		// the file position would still be where that write stopped,
		// and the next group would land past a hole of zeros while its
		// Locs name activeOff.
		if _, err = s.active.WriteAt(s.buf, s.activeOff); err == nil {
			err = unix.Fdatasync(int(s.active.Fd()))
			s.fsyncs.Add(1)
		}
		if err != nil {
			// Cut what was written (ENOSPC leaves a part) so that the
			// next group starts at a record boundary; if even that
			// fails, the next group starts a new segment.
			if terr := s.active.Truncate(s.activeOff); terr != nil {
				s.rotate()
			}
		}
	}
	s.writeFailing.Store(err != nil)
	if err != nil {
		// A full disk fails every group: one line per writeLogEvery.
		s.failedGroups++
		if now := time.Now(); now.Sub(s.lastWriteLog) >= writeLogEvery {
			s.log.Warn("spool: write failed", "records", len(group), "err", err, "failed_groups", s.failedGroups)
			s.lastWriteLog, s.failedGroups = now, 0
		}
		for _, r := range group {
			s.reserved.Add(-int64(r.size))
			s.failed.Add(1)
			r.done(Loc{}, fmt.Errorf("spool: %w", err))
		}
		return
	}
	written := int64(len(s.buf))
	var hdr int64
	if s.activeOff == 0 {
		hdr = segHeaderSize
	}
	s.activeOff += written
	s.filesMu.Lock()
	seg := s.segs[s.activeSeg]
	seg.live += len(group)
	seg.size += written
	s.filesMu.Unlock()
	s.diskBytes.Add(written)
	s.records.Add(int64(len(group)))
	s.bytes.Add(written - hdr)
	s.appended.Add(uint64(len(group)))
	// The reservation was recordSize each, which is what was written
	// with the segment's header.
	s.reserved.Add(hdr)
	for i, r := range group {
		r.done(locs[i], nil)
	}
	if s.activeOff >= s.cfg.SegmentSize {
		s.rotate()
	}
	if len(s.buf) > maxGroupBytes {
		s.buf = nil // one huge record: do not keep its buffer
	}
}

// ensureActive opens a new segment when there is none.
func (s *Spool) ensureActive() error {
	if s.active != nil {
		return nil
	}
	n := s.activeSeg + 1
	f, err := os.OpenFile(segName(s.cfg.Dir, n), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	ack, err := os.OpenFile(ackName(s.cfg.Dir, n), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		f.Close()
		os.Remove(segName(s.cfg.Dir, n))
		return err
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		f.Close()
		ack.Close()
		os.Remove(segName(s.cfg.Dir, n))
		os.Remove(ackName(s.cfg.Dir, n))
		return err
	}
	// The new names must survive a crash with the records in them.
	if d, err := os.Open(s.cfg.Dir); err == nil {
		d.Sync()
		d.Close()
	}
	s.active, s.activeSeg, s.activeOff = f, n, 0
	s.activeNonce = binary.LittleEndian.Uint64(nonce[:])
	s.filesMu.Lock()
	s.files[n] = f
	s.segs[n] = &segment{nonce: s.activeNonce, ack: ack}
	s.filesMu.Unlock()
	return nil
}

// rotate stops appending to the active segment; the next group opens a
// new one. A segment already without live records goes at once.
func (s *Spool) rotate() {
	if s.active == nil {
		return
	}
	s.active = nil
	s.filesMu.Lock()
	seg := s.segs[s.activeSeg]
	empty := seg != nil && seg.live == 0
	s.filesMu.Unlock()
	if empty {
		s.remove(s.activeSeg)
	}
}

// Read returns the record at loc as a message whose Data is a pooled
// buffer (the caller releases it) and whose Done is nil. A record that
// fails its CRC is quarantined and acknowledged, and Read returns an
// error: it will never be delivered, and it is on disk for the operator.
func (s *Spool) Read(loc Loc) (*sink.Message, error) {
	s.filesMu.Lock()
	f := s.files[loc.Seg]
	var nonce uint64
	if seg := s.segs[loc.Seg]; seg != nil {
		nonce = seg.nonce
	}
	s.filesMu.Unlock()
	if f == nil {
		return nil, fmt.Errorf("spool: segment %d: not open", loc.Seg)
	}
	rec := make([]byte, loc.Len)
	if _, err := f.ReadAt(rec, int64(loc.Off)); err != nil {
		return nil, fmt.Errorf("spool: read segment %d at %d: %w", loc.Seg, loc.Off, err)
	}
	m := &sink.Message{}
	if _, err := check(rec, nonce, loc.Off); err != nil {
		s.quarantine(loc.Seg, nonce, int(loc.Off), rec)
		s.Ack(loc)
		return nil, err
	}
	if _, err := decode(rec, m, true); err != nil {
		s.quarantine(loc.Seg, nonce, int(loc.Off), rec)
		s.Ack(loc)
		return nil, err
	}
	return m, nil
}

// Reject moves the record at loc, which no sink can take, to the
// quarantine and acknowledges it.
func (s *Spool) Reject(loc Loc) {
	s.filesMu.Lock()
	f := s.files[loc.Seg]
	var nonce uint64
	if seg := s.segs[loc.Seg]; seg != nil {
		nonce = seg.nonce
	}
	s.filesMu.Unlock()
	if f != nil {
		rec := make([]byte, loc.Len)
		if _, err := f.ReadAt(rec, int64(loc.Off)); err == nil {
			s.quarantine(loc.Seg, nonce, int(loc.Off), rec)
		}
	}
	s.Ack(loc)
}

// Taking reports whether the spool takes records now: it is not full and
// its last write succeeded.
func (s *Spool) Taking() bool {
	return !s.writeFailing.Load() && s.reserved.Load() < s.cfg.MaxBytes
}

// Ack records that the record at loc was delivered. The acknowledgement
// is written soon and not fsynced: one lost in a crash means the record
// is delivered again (at least once), never lost.
func (s *Spool) Ack(loc Loc) {
	s.ackMu.Lock()
	s.acks = append(s.acks, loc)
	s.ackMu.Unlock()
	select {
	case s.ackKick <- struct{}{}:
	default:
	}
}

const ackEntrySize = 8

func appendAck(dst []byte, off uint32) []byte {
	var b [4]byte
	b[0], b[1], b[2], b[3] = byte(off), byte(off>>8), byte(off>>16), byte(off>>24)
	dst = append(dst, b[:]...)
	c := crc32Of(b[:])
	return append(dst, byte(c), byte(c>>8), byte(c>>16), byte(c>>24))
}

func parseAck(b []byte) (uint32, bool) {
	off := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
	c := uint32(b[4]) | uint32(b[5])<<8 | uint32(b[6])<<16 | uint32(b[7])<<24
	return off, c == crc32Of(b[:4])
}

func crc32Of(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// flushAcks writes the queued acknowledgements and removes the segments
// left without live records (the active one included: the next group
// starts a new one, so that a drained spool gives its space back).
func (s *Spool) flushAcks() {
	s.ackMu.Lock()
	acks := s.acks
	s.acks = nil
	s.ackMu.Unlock()
	if len(acks) == 0 {
		return
	}
	bySeg := map[uint32][]byte{}
	for _, a := range acks {
		bySeg[a.Seg] = appendAck(bySeg[a.Seg], a.Off)
		s.records.Add(-1)
		s.bytes.Add(-int64(a.Len))
		s.acked.Add(1)
	}
	for n, b := range bySeg {
		s.filesMu.Lock()
		seg := s.segs[n]
		if seg == nil {
			s.filesMu.Unlock()
			continue
		}
		seg.live -= len(b) / ackEntrySize
		empty := seg.live <= 0
		s.filesMu.Unlock()
		if empty {
			if n == s.activeSeg && s.active != nil {
				s.active = nil
			}
			s.remove(n)
			continue
		}
		if _, err := seg.ack.Write(b); err != nil {
			s.log.Warn("spool: cannot write acknowledgements (their records will be delivered again)",
				"segment", n, "err", err)
		}
	}
}

// remove deletes segment n, every record of which is acknowledged.
func (s *Spool) remove(n uint32) {
	s.filesMu.Lock()
	seg := s.segs[n]
	f := s.files[n]
	delete(s.segs, n)
	delete(s.files, n)
	s.filesMu.Unlock()
	if f != nil {
		f.Close()
	}
	if seg != nil {
		if seg.ack != nil {
			seg.ack.Close()
		}
		s.diskBytes.Add(-seg.size)
		s.reserved.Add(-seg.size)
	}
	os.Remove(segName(s.cfg.Dir, n))
	os.Remove(ackName(s.cfg.Dir, n))
}

// Stats returns the counters.
func (s *Spool) Stats() Stats {
	return Stats{
		Records:   s.records.Load(),
		Bytes:     s.bytes.Load(),
		DiskBytes: s.diskBytes.Load(),
		Appended:  s.appended.Load(),
		Acked:     s.acked.Load(),
		Fsyncs:    s.fsyncs.Load(),
		Failed:    s.failed.Load(),
		Corrupt:   s.corruptRegions.Load(),
	}
}

// Close writes what is queued, then the acknowledgements, and closes the
// spool. Records not acknowledged stay for the next Open.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		<-s.done
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	close(s.stop)
	<-s.done
	s.closeFiles()
	return s.lock.Close() // releases the flock
}

func (s *Spool) closeFiles() {
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	for n, f := range s.files {
		f.Close()
		delete(s.files, n)
	}
	for _, seg := range s.segs {
		if seg.ack != nil {
			seg.ack.Close()
		}
	}
}

// Scan calls fn for every record in dir not yet acknowledged, oldest
// first, with the record's raw bytes, without changing anything: it is
// safe beside a running lsmtp (a record being written shows as damaged
// and is skipped). damaged counts the damaged regions seen.
func Scan(dir string, fn func(Entry, *sink.Message) error) (damaged int, err error) {
	nums, err := segments(dir)
	if err != nil {
		return 0, err
	}
	var ferr error
	var buf []byte
	for _, n := range nums {
		_, _, _, err := scanSegment(dir, n, &buf, func(e Entry, rec []byte) {
			if ferr != nil {
				return
			}
			m := &sink.Message{}
			if _, err := decode(rec, m, true); err != nil {
				damaged++
				return
			}
			ferr = fn(e, m)
			m.ReleaseData()
		}, func(uint32, uint64, int, []byte) { damaged++ })
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // removed meanwhile: delivered
			}
			return damaged, err
		}
		if ferr != nil {
			return damaged, ferr
		}
	}
	return damaged, nil
}

package codec

import (
	"bytes"
	"reflect"
	"testing"
)

// FuzzParseCommand: no input panics, errors are predefined replies, and
// what is parsed points into the line.
func FuzzParseCommand(f *testing.F) {
	for _, tc := range commandTests {
		f.Add([]byte(tc.line))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		var cmd Command
		err := ParseCommand(line, &cmd)
		if err != nil {
			r, ok := err.(*Reply)
			if !ok {
				t.Fatalf("%q: error %T is not a *Reply", line, err)
			}
			if r.Code != 500 && r.Code != 501 {
				t.Fatalf("%q: unexpected code %d", line, r.Code)
			}
			return
		}
		if cmd.Verb == VerbUnknown {
			t.Fatalf("%q: success with VerbUnknown", line)
		}
		for _, c := range line {
			if byteClass[c] == 1 {
				t.Fatalf("%q: accepted a control character", line)
			}
		}
		if !isSubslice(cmd.Arg, line) || !isSubslice(cmd.Path, line) || !isSubslice(cmd.Params, line) {
			t.Fatalf("%q: result does not point into the line", line)
		}
		switch cmd.Verb {
		case VerbMAIL, VerbRCPT:
			if cmd.Verb == VerbRCPT && len(cmd.Path) == 0 {
				t.Fatalf("%q: RCPT with a null path", line)
			}
			errASCII := ValidateMailbox(cmd.Path, false)
			errUTF8 := ValidateMailbox(cmd.Path, true)
			if errASCII == nil && errUTF8 != nil {
				t.Fatalf("%q: valid without SMTPUTF8, %v with it", cmd.Path, errUTF8)
			}
			if errUTF8 == nil && len(cmd.Path)+2 > maxPath {
				t.Fatalf("%q: accepted a path over %d octets", cmd.Path, maxPath)
			}
			var p MailParams
			if err := ParseMailParams(cmd.Params, &p); err != nil {
				if _, ok := err.(*Reply); !ok {
					t.Fatalf("%q: params error %T", cmd.Params, err)
				}
			} else if p.Size < 0 {
				t.Fatalf("%q: negative SIZE", cmd.Params)
			}
			if (ParseRcptParams(cmd.Params) == nil) != (len(cmd.Params) == 0) {
				t.Fatalf("%q: ParseRcptParams disagrees with emptiness", cmd.Params)
			}
		case VerbBDAT:
			if cmd.ChunkSize < 0 {
				t.Fatalf("%q: negative chunk size", line)
			}
		}
	})
}

// refLines is the plain reference framing: split at every LF, drop a CR
// before it, refuse lines over max octets including the ending.
func refLines(data []byte, max int) []lineEvent {
	var events []lineEvent
	for {
		lf := bytes.IndexByte(data, '\n')
		if lf < 0 {
			return events
		}
		line := data[:lf]
		if lf+1 > max {
			events = append(events, tooLong)
		} else {
			events = append(events, ok(string(bytes.TrimSuffix(line, []byte("\r")))))
		}
		data = data[lf+1:]
	}
}

// FuzzCommandReader: framing is independent of how the stream was split
// and agrees with the reference.
func FuzzCommandReader(f *testing.F) {
	for _, tc := range commandReaderTests {
		f.Add([]byte(tc.in), uint16(len(tc.in)/2), uint8(tc.maxLine))
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint16, maxLine uint8) {
		max := int(maxLine) // small limits reach the overlong paths often
		if max == 0 {
			max = DefaultMaxLine
		}
		want := refLines(data, max)
		whole, _ := readLines(t, max, [][]byte{data})
		if !reflect.DeepEqual(whole, want) {
			t.Fatalf("max %d: whole %v, reference %v", max, whole, want)
		}
		k := 0
		if len(data) > 0 {
			k = int(split) % (len(data) + 1)
		}
		if two, _ := readLines(t, max, [][]byte{data[:k], data[k:]}); !reflect.DeepEqual(two, want) {
			t.Fatalf("max %d, split at %d: %v, want %v", max, k, two, want)
		}
		bytewise := make([][]byte, len(data))
		for i := range data {
			bytewise[i] = data[i : i+1]
		}
		if bw, _ := readLines(t, max, bytewise); !reflect.DeepEqual(bw, want) {
			t.Fatalf("max %d, byte by byte: %v, want %v", max, bw, want)
		}
	})
}

// FuzzDataReader: the streaming reader agrees with the plain reference for
// every split, and the body ends exactly at the first CRLF "." CRLF of the
// stream that starts with the DATA command's CRLF.
func FuzzDataReader(f *testing.F) {
	for _, tc := range dataTests {
		f.Add([]byte(tc.in), uint16(len(tc.in)/2), uint16(tc.max), tc.normalize)
	}
	f.Fuzz(func(t *testing.T, data []byte, split uint16, max16 uint16, normalize bool) {
		max := int64(max16)
		want := refData(data, max, normalize)

		// The end, found without any state machine.
		stream := append([]byte("\r\n"), data...)
		if end := bytes.Index(stream, []byte("\r\n.\r\n")); end >= 0 {
			if !want.done || want.consumed != end+3 {
				t.Fatalf("%q: terminator at %d but reference done=%v consumed=%d", data, end, want.done, want.consumed)
			}
		} else if want.done {
			t.Fatalf("%q: reference ended without a CRLF.CRLF", data)
		}
		if int64(len(want.out)) > max || int64(len(want.out)) > want.size {
			t.Fatalf("%q: kept %d octets, max %d size %d", data, len(want.out), max, want.size)
		}

		k := 0
		if len(data) > 0 {
			k = int(split) % (len(data) + 1)
		}
		bytewise := make([][]byte, len(data))
		for i := range data {
			bytewise[i] = data[i : i+1]
		}
		for _, chunks := range [][][]byte{{data}, {data[:k], data[k:]}, bytewise} {
			if got := feedData(t, max, normalize, chunks); got != want {
				t.Fatalf("%q (max %d normalize %v) in %d chunks: got %+v, want %+v",
					data, max, normalize, len(chunks), got, want)
			}
		}
	})
}

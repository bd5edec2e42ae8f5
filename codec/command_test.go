package codec

import (
	"strings"
	"testing"
	"unsafe"
)

// cmdTest is one ParseCommand case: the parsed fields on success, or the
// exact reply.
type cmdTest struct {
	line   string
	verb   Verb
	arg    string
	path   string
	params string
	chunk  int64
	last   bool
	err    *Reply
}

var commandTests = []cmdTest{
	// HELO / EHLO: a domain is required, kept as given.
	{line: "HELO example.com", verb: VerbHELO, arg: "example.com"},
	{line: "ehlo example.com", verb: VerbEHLO, arg: "example.com"},
	{line: "EhLo [192.0.2.1]", verb: VerbEHLO, arg: "[192.0.2.1]"},
	{line: "EHLO  example.com \t ", verb: VerbEHLO, arg: "example.com"},
	{line: "EHLO\texample.com", verb: VerbEHLO, arg: "example.com"},
	{line: "HELO", verb: VerbHELO, err: ErrSyntaxHelo},
	{line: "EHLO   ", verb: VerbEHLO, err: ErrSyntaxHelo},

	// MAIL: forms that are accepted.
	{line: "MAIL FROM:<a@b.example>", verb: VerbMAIL, arg: "FROM:<a@b.example>", path: "a@b.example"},
	{line: "mail from:<a@b>", verb: VerbMAIL, arg: "from:<a@b>", path: "a@b"},
	{line: "MAIL FROM:<>", verb: VerbMAIL, arg: "FROM:<>", path: ""},
	{line: "MAIL FROM:<> BODY=8BITMIME", verb: VerbMAIL, arg: "FROM:<> BODY=8BITMIME", params: "BODY=8BITMIME"},
	{line: "MAIL FROM: <a@b>", verb: VerbMAIL, arg: "FROM: <a@b>", path: "a@b"},
	{line: "MAIL FROM:<a@b> SIZE=100 BODY=8BITMIME", verb: VerbMAIL, arg: "FROM:<a@b> SIZE=100 BODY=8BITMIME", path: "a@b", params: "SIZE=100 BODY=8BITMIME"},
	{line: "MAIL FROM:<a@b>   SIZE=1  ", verb: VerbMAIL, arg: "FROM:<a@b>   SIZE=1", path: "a@b", params: "SIZE=1"},
	{line: `MAIL FROM:<"a b"@x>`, verb: VerbMAIL, arg: `FROM:<"a b"@x>`, path: `"a b"@x`},
	{line: `MAIL FROM:<"a>b"@x>`, verb: VerbMAIL, arg: `FROM:<"a>b"@x>`, path: `"a>b"@x`},
	{line: `MAIL FROM:<"a\">"@x>`, verb: VerbMAIL, arg: `FROM:<"a\">"@x>`, path: `"a\">"@x`},
	{line: "MAIL FROM:<user@[192.0.2.1]>", verb: VerbMAIL, arg: "FROM:<user@[192.0.2.1]>", path: "user@[192.0.2.1]"},
	{line: "MAIL FROM:<user@[IPv6:2001:db8::1]>", verb: VerbMAIL, arg: "FROM:<user@[IPv6:2001:db8::1]>", path: "user@[IPv6:2001:db8::1]"},
	{line: "MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8", verb: VerbMAIL, arg: "FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8", path: "δοκιμή@παράδειγμα.δοκιμή", params: "SMTPUTF8"},

	// MAIL: source routes are stripped (RFC 5321 §4.1.1.3, Appendix C).
	{line: "MAIL FROM:<@a.example,@b.example:c@d.example>", verb: VerbMAIL, arg: "FROM:<@a.example,@b.example:c@d.example>", path: "c@d.example"},
	{line: "MAIL FROM:<@a:c@d> SIZE=5", verb: VerbMAIL, arg: "FROM:<@a:c@d> SIZE=5", path: "c@d", params: "SIZE=5"},
	{line: "MAIL FROM:<@a,@b>", verb: VerbMAIL, err: ErrBadRoute},
	{line: "MAIL FROM:<@a,:c@d>", verb: VerbMAIL, err: ErrBadRoute},
	{line: "MAIL FROM:<@a,@b,:c@d>", verb: VerbMAIL, err: ErrBadRoute},
	{line: "MAIL FROM:<@:c@d>", verb: VerbMAIL, err: ErrBadRoute},
	{line: "MAIL FROM:<@a,b:c@d>", verb: VerbMAIL, err: ErrBadRoute},
	{line: "MAIL FROM:<@a_b:c@d>", verb: VerbMAIL, err: ErrBadRoute},
	{line: "MAIL FROM:<@a:>", verb: VerbMAIL, err: ErrBadAddress},

	// MAIL: syntax errors.
	{line: "MAIL", verb: VerbMAIL, err: ErrSyntaxMail},
	{line: "MAIL FROM:", verb: VerbMAIL, err: ErrSyntaxMail},
	{line: "MAIL FROM:a@b", verb: VerbMAIL, err: ErrSyntaxMail},
	{line: "MAIL FROM:<a@b", verb: VerbMAIL, err: ErrSyntaxMail},
	{line: "MAIL TO:<a@b>", verb: VerbMAIL, err: ErrSyntaxMail},
	{line: "MAIL FROM :<a@b>", verb: VerbMAIL, err: ErrSyntaxMail},
	{line: "MAIL FROM<a@b>", verb: VerbMAIL, err: ErrSyntaxMail},
	{line: "MAIL FROM:<a@b>SIZE=1", verb: VerbMAIL, err: ErrSyntaxMail},
	{line: `MAIL FROM:<"a@b>`, verb: VerbMAIL, err: ErrSyntaxMail},
	{line: `MAIL FROM:<"a\"@b>`, verb: VerbMAIL, err: ErrSyntaxMail},
	{line: "MAILFROM:<a@b>", err: ErrUnknownCommand},

	// RCPT.
	{line: "RCPT TO:<b@c>", verb: VerbRCPT, arg: "TO:<b@c>", path: "b@c"},
	{line: "rcpt to:<postmaster>", verb: VerbRCPT, arg: "to:<postmaster>", path: "postmaster"},
	{line: "RCPT TO:<Postmaster@example.com>", verb: VerbRCPT, arg: "TO:<Postmaster@example.com>", path: "Postmaster@example.com"},
	{line: "RCPT TO: <b@c>", verb: VerbRCPT, arg: "TO: <b@c>", path: "b@c"},
	{line: "RCPT TO:<b@c> NOTIFY=NEVER", verb: VerbRCPT, arg: "TO:<b@c> NOTIFY=NEVER", path: "b@c", params: "NOTIFY=NEVER"},
	{line: "RCPT TO:<@relay.example:b@c>", verb: VerbRCPT, arg: "TO:<@relay.example:b@c>", path: "b@c"},
	{line: "RCPT TO:<ü@c>", verb: VerbRCPT, arg: "TO:<ü@c>", path: "ü@c"},
	{line: "RCPT TO:<>", verb: VerbRCPT, err: ErrNullRecipient},
	{line: "RCPT TO:b@c", verb: VerbRCPT, err: ErrSyntaxRcpt},
	{line: "RCPT TO:", verb: VerbRCPT, err: ErrSyntaxRcpt},
	{line: "RCPT", verb: VerbRCPT, err: ErrSyntaxRcpt},
	{line: "RCPT FROM:<b@c>", verb: VerbRCPT, err: ErrSyntaxRcpt},
	{line: "RCPT TO:<b@c", verb: VerbRCPT, err: ErrSyntaxRcpt},

	// DATA, RSET, QUIT take no arguments.
	{line: "DATA", verb: VerbDATA},
	{line: "data", verb: VerbDATA},
	{line: "DATA  ", verb: VerbDATA},
	{line: "DATA x", verb: VerbDATA, err: ErrNoArguments},
	{line: "RSET", verb: VerbRSET},
	{line: "RSET now", verb: VerbRSET, err: ErrNoArguments},
	{line: "QUIT", verb: VerbQUIT},
	{line: "quit", verb: VerbQUIT},
	{line: "QUIT please", verb: VerbQUIT, err: ErrNoArguments},

	// BDAT (RFC 3030 §2).
	{line: "BDAT 0 LAST", verb: VerbBDAT, arg: "0 LAST", chunk: 0, last: true},
	{line: "BDAT 10", verb: VerbBDAT, arg: "10", chunk: 10},
	{line: "bdat 5 last", verb: VerbBDAT, arg: "5 last", chunk: 5, last: true},
	{line: "BDAT 5  LAST ", verb: VerbBDAT, arg: "5  LAST", chunk: 5, last: true},
	{line: "BDAT 007", verb: VerbBDAT, arg: "007", chunk: 7},
	{line: "BDAT 9223372036854775807", verb: VerbBDAT, arg: "9223372036854775807", chunk: 9223372036854775807},
	{line: "BDAT -1", verb: VerbBDAT, err: ErrSyntaxBDAT},
	{line: "BDAT +1", verb: VerbBDAT, err: ErrSyntaxBDAT},
	{line: "BDAT 9223372036854775808", verb: VerbBDAT, err: ErrSyntaxBDAT},
	{line: "BDAT 99999999999999999999", verb: VerbBDAT, err: ErrSyntaxBDAT},
	{line: "BDAT 5 LAST junk", verb: VerbBDAT, err: ErrSyntaxBDAT},
	{line: "BDAT 5 LASTX", verb: VerbBDAT, err: ErrSyntaxBDAT},
	{line: "BDAT 5 FIRST", verb: VerbBDAT, err: ErrSyntaxBDAT},
	{line: "BDAT 5x", verb: VerbBDAT, err: ErrSyntaxBDAT},
	{line: "BDAT LAST", verb: VerbBDAT, err: ErrSyntaxBDAT},
	{line: "BDAT", verb: VerbBDAT, err: ErrSyntaxBDAT},

	// NOOP, HELP and VRFY take optional arguments.
	{line: "NOOP", verb: VerbNOOP},
	{line: "NOOP hello there", verb: VerbNOOP, arg: "hello there"},
	{line: "NOOP\thello", verb: VerbNOOP, arg: "hello"},
	{line: "HELP", verb: VerbHELP},
	{line: "help MAIL", verb: VerbHELP, arg: "MAIL"},
	{line: "VRFY", verb: VerbVRFY},
	{line: "VRFY user", verb: VerbVRFY, arg: "user"},

	// Recognised, not implemented: parsed so the engine can answer 502.
	{line: "EXPN staff", verb: VerbEXPN, arg: "staff"},
	{line: "STARTTLS", verb: VerbSTARTTLS},
	{line: "starttls", verb: VerbSTARTTLS},
	{line: "AUTH PLAIN AGFAAGI=", verb: VerbAUTH, arg: "PLAIN AGFAAGI="},
	{line: "TURN", verb: VerbTURN},
	{line: "ETRN example.com", verb: VerbETRN, arg: "example.com"},
	{line: "ATRN", verb: VerbATRN},
	{line: "SEND FROM:<a@b>", verb: VerbSEND, arg: "FROM:<a@b>"},
	{line: "SOML FROM:<a@b>", verb: VerbSOML, arg: "FROM:<a@b>"},
	{line: "SAML FROM:<a@b>", verb: VerbSAML, arg: "FROM:<a@b>"},
	{line: "XCLIENT ADDR=192.0.2.7 HELO=mx.example", verb: VerbXCLIENT, arg: "ADDR=192.0.2.7 HELO=mx.example"},
	{line: "xclient  name=a ", verb: VerbXCLIENT, arg: "name=a"},
	{line: "XCLIENT", verb: VerbXCLIENT, err: ErrSyntaxXclient},
	{line: "XCLIENT \t ", verb: VerbXCLIENT, err: ErrSyntaxXclient},

	// Unknown verbs: 500 5.5.2.
	{line: "", err: ErrUnknownCommand},
	{line: "   ", err: ErrUnknownCommand},
	{line: "XYZZY", err: ErrUnknownCommand},
	{line: "HEL", err: ErrUnknownCommand},
	{line: "HELOX example.com", err: ErrUnknownCommand},
	{line: " HELO example.com", err: ErrUnknownCommand},
	{line: "STARTTLSX", err: ErrUnknownCommand},
	{line: "GET / HTTP/1.1", err: ErrUnknownCommand},
	{line: "XYZ\xff", err: ErrUnknownCommand},

	// Control characters stop any command (RFC 5321 §2.3.8, §4.1.1).
	{line: "HELO a\x00b", err: ErrControlChar},
	{line: "\x00", err: ErrControlChar},
	{line: "MAIL FROM:<a@b>\r", err: ErrControlChar},
	{line: "RCPT TO:<a\rb@c>", err: ErrControlChar},
	{line: "NOOP \x1b[31m", err: ErrControlChar},
	{line: "NOOP \x7f", err: ErrControlChar},
	{line: "XYZ\x01", err: ErrControlChar},

	// 8-bit octets only in MAIL and RCPT.
	{line: "HELO ex\xc3\xa4mple.com", verb: VerbHELO, err: Err8BitCommand},
	{line: "NOOP \xff", verb: VerbNOOP, err: Err8BitCommand},
	{line: "VRFY \xc3\xbc", verb: VerbVRFY, err: Err8BitCommand},
	{line: "DATA \x80", verb: VerbDATA, err: Err8BitCommand},
}

// isSubslice reports whether sub lies within s's backing array range.
func isSubslice(sub, s []byte) bool {
	if len(sub) == 0 {
		return true
	}
	if len(s) == 0 {
		return false
	}
	start := uintptr(unsafe.Pointer(unsafe.SliceData(s)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(sub)))
	return p >= start && p+uintptr(len(sub)) <= start+uintptr(len(s))
}

func TestParseCommand(t *testing.T) {
	for _, tc := range commandTests {
		line := []byte(tc.line)
		var cmd Command
		err := ParseCommand(line, &cmd)
		if tc.err != nil {
			r, ok := err.(*Reply)
			if !ok || r != tc.err {
				t.Errorf("%q: got error %v, want %d %s %q", tc.line, err, tc.err.Code, tc.err.Enhanced, tc.err.Text)
				continue
			}
			if tc.verb != VerbUnknown && cmd.Verb != tc.verb {
				t.Errorf("%q: verb %v on error, want %v", tc.line, cmd.Verb, tc.verb)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: unexpected error %v", tc.line, err)
			continue
		}
		if cmd.Verb != tc.verb || string(cmd.Arg) != tc.arg || string(cmd.Path) != tc.path ||
			string(cmd.Params) != tc.params || cmd.ChunkSize != tc.chunk || cmd.Last != tc.last {
			t.Errorf("%q: got {%v arg=%q path=%q params=%q chunk=%d last=%v}, want {%v arg=%q path=%q params=%q chunk=%d last=%v}",
				tc.line, cmd.Verb, cmd.Arg, cmd.Path, cmd.Params, cmd.ChunkSize, cmd.Last,
				tc.verb, tc.arg, tc.path, tc.params, tc.chunk, tc.last)
		}
		if !isSubslice(cmd.Arg, line) || !isSubslice(cmd.Path, line) || !isSubslice(cmd.Params, line) {
			t.Errorf("%q: result does not point into the line", tc.line)
		}
	}
}

// The codes on the wire are part of the contract with clients.
func TestParseCommandReplyCodes(t *testing.T) {
	want := map[*Reply]string{
		ErrUnknownCommand: "500 5.5.2",
		ErrControlChar:    "500 5.5.2",
		Err8BitCommand:    "500 5.5.2",
		ErrLineTooLong:    "500 5.5.6",
		ErrSyntaxHelo:     "501 5.5.4",
		ErrSyntaxMail:     "501 5.5.4",
		ErrSyntaxRcpt:     "501 5.5.4",
		ErrSyntaxBDAT:     "501 5.5.4",
		ErrNoArguments:    "501 5.5.4",
		ErrBadRoute:       "501 5.1.3",
		ErrBadAddress:     "501 5.1.3",
		ErrNullRecipient:  "501 5.1.3",
	}
	for r, code := range want {
		if got := r.Error(); !strings.HasPrefix(got, code+" ") {
			t.Errorf("%q: want prefix %q", got, code)
		}
	}
}

// A reused Command must not keep fields of the previous command.
func TestParseCommandResetsCommand(t *testing.T) {
	var cmd Command
	if err := ParseCommand([]byte("BDAT 5 LAST"), &cmd); err != nil {
		t.Fatal(err)
	}
	if err := ParseCommand([]byte("MAIL FROM:<a@b> SIZE=1"), &cmd); err != nil {
		t.Fatal(err)
	}
	if err := ParseCommand([]byte("DATA"), &cmd); err != nil {
		t.Fatal(err)
	}
	if cmd.Verb != VerbDATA || cmd.Arg != nil && len(cmd.Arg) != 0 || cmd.Path != nil || cmd.Params != nil || cmd.ChunkSize != 0 || cmd.Last {
		t.Errorf("stale fields: %+v", cmd)
	}
}

func TestVerbString(t *testing.T) {
	for v := VerbUnknown; v <= VerbXCLIENT; v++ {
		name := v.String()
		if v == VerbUnknown {
			if name != "UNKNOWN" {
				t.Errorf("VerbUnknown.String() = %q", name)
			}
			continue
		}
		// Every name parses back to its verb, in any case.
		if got := lookupVerb([]byte(strings.ToLower(name))); got != v {
			t.Errorf("%q parses as %v, want %v", name, got, v)
		}
	}
	if got := Verb(200).String(); got != "UNKNOWN" {
		t.Errorf("Verb(200).String() = %q", got)
	}
}

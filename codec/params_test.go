package codec

import (
	"strings"
	"testing"
)

var mailParamTests = []struct {
	params string
	want   MailParams
	err    *Reply
}{
	// Nothing to parse.
	{params: ""},
	{params: "   "},

	// SIZE (RFC 1870).
	{params: "SIZE=100", want: MailParams{Size: 100, HasSize: true}},
	{params: "size=0", want: MailParams{Size: 0, HasSize: true}},
	{params: "SIZE=9223372036854775807", want: MailParams{Size: 9223372036854775807, HasSize: true}},
	{params: "SIZE=9223372036854775808", err: ErrBadSize},
	{params: "SIZE=123456789012345678901", err: ErrBadSize},
	{params: "SIZE=", err: ErrBadSize},
	{params: "SIZE", err: ErrBadSize},
	{params: "SIZE=-1", err: ErrBadSize},
	{params: "SIZE=1k", err: ErrBadSize},
	{params: "SIZE=1 SIZE=2", err: ErrDuplicateParam},

	// BODY (RFC 6152, RFC 3030).
	{params: "BODY=7BIT", want: MailParams{Body: Body7Bit}},
	{params: "body=8bitmime", want: MailParams{Body: Body8BitMIME}},
	{params: "BODY=BINARYMIME", want: MailParams{Body: BodyBinaryMIME}},
	{params: "BODY=8BIT", err: ErrBadBody},
	{params: "BODY=", err: ErrBadBody},
	{params: "BODY", err: ErrBadBody},
	{params: "BODY=8BITMIMEX", err: ErrBadBody},
	{params: "BODY=7BIT BODY=8BITMIME", err: ErrDuplicateParam},
	{params: "BODY=7BIT BODY=7BIT", err: ErrDuplicateParam},

	// SMTPUTF8 (RFC 6531 §3.4).
	{params: "SMTPUTF8", want: MailParams{SMTPUTF8: true}},
	{params: "smtputf8", want: MailParams{SMTPUTF8: true}},
	{params: "SMTPUTF8=yes", err: ErrBadSMTPUTF8},
	{params: "SMTPUTF8=", err: ErrBadSMTPUTF8},
	{params: "SMTPUTF8 SMTPUTF8", err: ErrDuplicateParam},

	// Combinations and separators.
	{params: "SIZE=10 BODY=8BITMIME SMTPUTF8", want: MailParams{Size: 10, HasSize: true, Body: Body8BitMIME, SMTPUTF8: true}},
	{params: "  SIZE=10\tBODY=BINARYMIME  ", want: MailParams{Size: 10, HasSize: true, Body: BodyBinaryMIME}},
	{params: "SMTPUTF8 SIZE=7", want: MailParams{Size: 7, HasSize: true, SMTPUTF8: true}},
	{params: "SIZE=10 RET=HDRS", err: ErrUnknownParam},

	// AUTH= (RFC 4954 §5): "<>" or xtext, checked and otherwise ignored.
	{params: "AUTH=<>", want: MailParams{HasAuth: true}},
	{params: "auth=alice@example.org", want: MailParams{HasAuth: true}},
	{params: "AUTH=a+2Bb SIZE=1", want: MailParams{HasAuth: true, Size: 1, HasSize: true}},
	{params: "AUTH=", err: ErrParamSyntax},
	{params: "AUTH", err: ErrParamSyntax},
	{params: "AUTH=a+2", err: ErrParamSyntax},
	{params: "AUTH=a+2b", err: ErrParamSyntax},
	{params: "AUTH=a=b", err: ErrParamSyntax},
	{params: "AUTH=<> AUTH=<>", err: ErrDuplicateParam},

	// Unknown keywords: 555.
	{params: "RET=HDRS", err: ErrUnknownParam},
	{params: "ENVID=x", err: ErrUnknownParam},
	{params: "SIZES=1", err: ErrUnknownParam},
	{params: "X-FOO", err: ErrUnknownParam},

	// Malformed keywords: 501.
	{params: "=x", err: ErrParamSyntax},
	{params: "-X=1", err: ErrParamSyntax},
	{params: "SI_ZE=1", err: ErrParamSyntax},
	{params: "SIZE=1 \xff", err: ErrParamSyntax},
}

func TestParseMailParams(t *testing.T) {
	for _, tc := range mailParamTests {
		p := MailParams{Size: 99, HasSize: true, Body: BodyBinaryMIME, SMTPUTF8: true} // must be reset
		err := ParseMailParams([]byte(tc.params), &p)
		if tc.err != nil {
			if r, ok := err.(*Reply); !ok || r != tc.err {
				t.Errorf("%q: got %v, want %v", tc.params, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: unexpected %v", tc.params, err)
			continue
		}
		if p != tc.want {
			t.Errorf("%q: got %+v, want %+v", tc.params, p, tc.want)
		}
	}
}

func TestParseRcptParams(t *testing.T) {
	for params, want := range map[string]*Reply{
		"":                       nil,
		"  ":                     nil,
		"NOTIFY=NEVER":           ErrRcptParam,
		"ORCPT=rfc822;a@example": ErrRcptParam,
		" X":                     ErrRcptParam,
	} {
		err := ParseRcptParams([]byte(params))
		if want == nil && err != nil || want != nil && err != want {
			t.Errorf("%q: got %v, want %v", params, err, want)
		}
	}
}

func TestParamReplyCodes(t *testing.T) {
	for r, want := range map[*Reply]string{
		ErrUnknownParam:   "555 5.5.4 ",
		ErrRcptParam:      "555 5.5.4 ",
		ErrParamSyntax:    "501 5.5.4 ",
		ErrBadSize:        "501 5.5.4 ",
		ErrBadBody:        "501 5.5.4 ",
		ErrBadSMTPUTF8:    "501 5.5.4 ",
		ErrDuplicateParam: "501 5.5.4 ",
	} {
		if !strings.HasPrefix(r.Error(), want) {
			t.Errorf("%q: want prefix %q", r.Error(), want)
		}
	}
}

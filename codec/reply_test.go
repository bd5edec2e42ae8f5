package codec

import "testing"

func TestAppendReply(t *testing.T) {
	for _, tc := range []struct {
		code           int
		enhanced, text string
		want           string
	}{
		{250, "2.0.0", "OK", "250 2.0.0 OK\r\n"},
		{220, "", "mx.example ESMTP", "220 mx.example ESMTP\r\n"},
		{354, "", "End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>\r\n"},
		{221, "2.0.0", "", "221 2.0.0\r\n"},
		{250, "", "", "250\r\n"},
		// Control characters cannot split a reply (reply injection).
		{250, "2.0.0", "a\r\n250 b", "250 2.0.0 a??250 b\r\n"},
		{250, "2.0.0", "a\x00b", "250 2.0.0 a?b\r\n"},
	} {
		if got := string(AppendReply(nil, tc.code, tc.enhanced, tc.text)); got != tc.want {
			t.Errorf("AppendReply(%d, %q, %q) = %q, want %q", tc.code, tc.enhanced, tc.text, got, tc.want)
		}
	}
}

func TestAppendReplyKeepsPrefix(t *testing.T) {
	got := string(AppendReply([]byte("250 2.0.0 OK\r\n"), 221, "2.0.0", "Bye"))
	if want := "250 2.0.0 OK\r\n221 2.0.0 Bye\r\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestAppendReplyLines(t *testing.T) {
	for _, tc := range []struct {
		lines []string
		want  string
	}{
		{[]string{"mx.example", "PIPELINING", "8BITMIME"}, "250-mx.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"},
		{[]string{"mx.example"}, "250 mx.example\r\n"},
		{nil, "250\r\n"},
		{[]string{"a\nb", "c"}, "250-a?b\r\n250 c\r\n"},
	} {
		if got := string(AppendReplyLines(nil, 250, tc.lines...)); got != tc.want {
			t.Errorf("AppendReplyLines(%q) = %q, want %q", tc.lines, got, tc.want)
		}
	}
}

func TestReplyErrorAndAppendTo(t *testing.T) {
	r := &Reply{Code: 451, Enhanced: "4.3.0", Text: "Try again later"}
	if got, want := r.Error(), "451 4.3.0 Try again later"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := string(r.AppendTo([]byte("x"))), "x451 4.3.0 Try again later\r\n"; got != want {
		t.Errorf("AppendTo = %q, want %q", got, want)
	}
	var err error = ErrLineTooLong
	if got, want := err.Error(), "500 5.5.6 Line too long"; got != want {
		t.Errorf("ErrLineTooLong = %q, want %q", got, want)
	}
}

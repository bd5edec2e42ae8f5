package engine

import (
	"bytes"
	"strconv"
	"time"

	"github.com/lsmtp/lsmtp/codec"
)

// command handles one command line.
func (s *session) command(line []byte, now time.Time) {
	before := len(s.out)
	s.dispatch(line, now)
	var class byte
	if len(s.out) > before {
		class = s.out[before] - '0'
	}
	s.srv.stats.countCommand(s.cmd.Verb, class)
}

func (s *session) dispatch(line []byte, now time.Time) {
	first := s.commands == 0
	s.commands++
	cmd := &s.cmd
	if first && bytes.HasPrefix(line, []byte("PROXY ")) {
		// A PROXY header from an address we do not trust: obeying it
		// would let anyone claim any client address.
		s.srv.stats.Refused[RefusedProxy].Add(1)
		cmd.Verb = codec.VerbUnknown
		s.out = append(s.out, s.cfg.replies.proxy...)
		s.closeAfter = true
		return
	}
	if err := codec.ParseCommand(line, cmd); err != nil {
		cmd.Verb = codec.VerbUnknown
		if first && isHTTP(line) {
			// A browser or proxy probe. Postfix hangs up on these too
			// (smtpd_forbidden_commands); answering 500 ten times helps no one.
			s.out = append(s.out, s.cfg.replies.nonSMTP...)
			s.closeAfter = true
			return
		}
		s.fail(asReply(err))
		return
	}
	switch cmd.Verb {
	case codec.VerbHELO, codec.VerbEHLO:
		s.hello(cmd.Verb == codec.VerbEHLO)
	case codec.VerbMAIL:
		s.mail(now)
	case codec.VerbRCPT:
		s.rcpt()
	case codec.VerbDATA:
		s.dataCmd(now)
	case codec.VerbBDAT:
		s.bdatCmd(now)
	case codec.VerbRSET:
		s.resetTransaction()
		s.reply(replyOK)
	case codec.VerbNOOP:
		s.reply(replyOK)
	case codec.VerbQUIT:
		s.out = append(s.out, s.cfg.replies.quit...)
		s.closeAfter = true
	case codec.VerbVRFY:
		s.reply(replyVRFY)
	case codec.VerbHELP:
		s.reply(replyHelp)
	case codec.VerbSTARTTLS:
		s.startTLSCmd()
	case codec.VerbAUTH:
		s.authCmd(now)
	case codec.VerbXCLIENT:
		s.xclient(now)
	default:
		s.fail(replyNotImpl)
	}
}

// isHTTP recognises the first line of an HTTP request.
func isHTTP(line []byte) bool {
	for _, m := range [...]string{"GET ", "POST ", "HEAD ", "PUT ", "CONNECT ", "OPTIONS "} {
		if bytes.HasPrefix(line, []byte(m)) {
			return true
		}
	}
	return false
}

// hello handles HELO and EHLO; both reset the transaction (RFC 5321 §4.1.4).
// The argument is one Domain or address-literal (§4.1.1.1): text with
// blanks in it is refused, since it is no name and only serves to forge
// the "by ... with ... id" of a trace header. A single token that is
// neither is kept only in sanitised form (appendHeloComment).
func (s *session) hello(ehlo bool) {
	arg := s.cmd.Arg
	if bytes.IndexByte(arg, ' ') >= 0 || bytes.IndexByte(arg, '\t') >= 0 {
		s.fail(codec.ErrSyntaxHelo)
		return
	}
	s.resetTransaction()
	if !s.xhelo { // XCLIENT HELO= names the client; the relay's own name is not it
		s.heloOK = codec.ValidHelo(arg)
		if s.heloOK {
			s.helo = append(s.helo[:0], arg...)
		} else {
			s.helo = appendHeloComment(s.helo[:0], arg)
		}
	}
	s.ehlo = ehlo
	s.sizeOffered = 0
	if ehlo {
		s.out = append(s.out, s.ehloReply()...)
		if s.xclientOK {
			s.out = appendXclientKeyword(s.out)
		}
	} else {
		s.out = append(s.out, s.cfg.replies.helo...)
	}
}

func (s *session) mail(now time.Time) {
	cmd := &s.cmd
	switch {
	case len(s.helo) == 0:
		s.fail(replyNeedHelo)
		return
	case s.hasMail:
		s.fail(replyNestedMail)
		return
	case !s.ehlo && len(cmd.Params) > 0:
		s.fail(replyNoParams)
		return
	}
	if r := s.mailGate(); r != nil {
		s.fail(r)
		return
	}
	var p codec.MailParams
	if err := codec.ParseMailParams(cmd.Params, &p); err != nil {
		s.fail(asReply(err))
		return
	}
	if len(cmd.Path) > 0 {
		if err := codec.ValidateMailbox(cmd.Path, p.SMTPUTF8); err != nil {
			s.fail(asReply(err))
			return
		}
	}
	if p.HasSize && p.Size > s.cfg.maxSize() {
		// RFC 1870 §6.1: refuse at MAIL what cannot be accepted at DATA.
		s.fail(s.sizeRefusal(p.Size))
		return
	}
	if pol := s.cfg.Policy; pol != nil && !pol.TakeMessage(s.remote.Addr(), now) {
		s.srv.stats.Messages[OutcomeRateLimited].Add(1)
		s.refuse(replyMsgRate)
		return
	}
	s.hasMail = true
	s.txStart = now
	s.params = p
	s.env = append(s.env[:0], cmd.Path...)
	s.sender = span{0, len(s.env)}
	s.reply(replySenderOK)
}

func (s *session) rcpt() {
	cmd := &s.cmd
	switch {
	case !s.hasMail:
		s.fail(replyNeedMail)
		return
	case s.bdat:
		s.fail(replyRcptAfterBDAT)
		return
	case !s.ehlo && len(cmd.Params) > 0:
		s.fail(replyNoParams)
		return
	}
	if err := codec.ParseRcptParams(cmd.Params); err != nil {
		s.fail(asReply(err))
		return
	}
	switch {
	case len(cmd.Path) == 0:
		s.fail(replyNullRcpt)
		return
	case codec.IsPostmaster(cmd.Path):
	default:
		if err := codec.ValidateMailbox(cmd.Path, s.params.SMTPUTF8); err != nil {
			s.fail(asReply(err))
			return
		}
		if m := s.cfg.limits.MaxDomain; m > 0 && loweredLen(domainOf(cmd.Path)) > m {
			s.fail(replyDomainTooLong)
			return
		}
		if pol := s.cfg.Policy; pol != nil && !pol.RecipientAllowed(cmd.Path) {
			s.refuse(replyDomain)
			return
		}
	}
	// RFC 5321 §4.5.3.1.10: past a limit of ours, 452; the client sends
	// the rest in another transaction.
	if len(s.rcpts) >= s.cfg.MaxRecipients {
		s.reply(replyTooMany)
		return
	}
	lim := &s.cfg.limits
	domain := domainOf(cmd.Path)
	isNew := countsDomains(lim) && s.newDomain(domain)
	if isNew && lim.MaxDomains > 0 && len(s.domains) >= lim.MaxDomains {
		s.reply(replyTooManyDomains)
		return
	}
	// The sender is the start of env, the recipients follow it.
	if lim.MaxEnvelope > 0 && len(s.env)+len(cmd.Path)+(len(s.rcpts)+1)*lim.RecipientOverhead > lim.MaxEnvelope {
		s.reply(replyEnvelopeFull)
		return
	}
	start := len(s.env)
	s.env = append(s.env, cmd.Path...)
	s.rcpts = append(s.rcpts, span{start, len(s.env)})
	if isNew {
		s.domains = append(s.domains, span{len(s.env) - len(domain), len(s.env)})
	}
	s.reply(replyRecipientOK)
}

// refuse answers a refusal of policy or rate (550 5.7.1, 450 4.7.1) and
// counts it toward MaxErrors as fail counts a protocol error: a client
// that keeps trying what it was refused is not a mailer making progress.
func (s *session) refuse(r *codec.Reply) {
	s.reply(r)
	s.countError(r)
}

func (s *session) dataCmd(now time.Time) {
	switch {
	case s.bdat:
		s.fail(replyDataAfterBDAT)
		return
	case !s.hasMail:
		s.fail(replyNeedMailData)
		return
	case len(s.rcpts) == 0:
		s.fail(replyNoRecipients) // RFC 2920 §3.1
		return
	case s.params.Body == codec.BodyBinaryMIME:
		s.fail(replyBinaryMIME) // RFC 3030 §3
		return
	}
	s.beginMessage(now)
	s.data.Reset(s.cfg.maxSize(), s.cfg.NormalizeBareEOL)
	s.state = stData
	s.reply(replyStartData)
}

// endData runs after the final CRLF.CRLF. Only now may an oversized or
// malformed body be refused: answering earlier would make the rest of the
// body read as commands (SMTP smuggling).
func (s *session) endData(now time.Time) {
	switch {
	case s.data.TooBig() || s.data.Size() > s.cfg.maxSize(): // the bound may have fallen since DATA
		r := s.sizeRefusal(s.data.Size())
		s.rejectMessage(r, sizeOutcome(r), now)
	case s.data.BareEOL() && !s.cfg.NormalizeBareEOL:
		s.rejectMessage(replyBareEOL, OutcomeBareEOL, now)
	case s.noMemory:
		s.rejectMessage(replyNoMemory, OutcomeNoMemory, now)
	case !s.holdCopies(): // the sink's further copies do not fit the budget
		s.rejectMessage(replyNoMemory, OutcomeNoMemory, now)
	default:
		s.submit(now)
	}
}

func (s *session) rejectMessage(r *codec.Reply, o Outcome, now time.Time) {
	s.state = stCommand
	s.fail(r)
	s.endTransaction(o, now)
}

// bdatCmd starts reading a chunk (RFC 3030 §2). Its octets are always
// read, even when the chunk is refused, so that they are never taken for
// commands; the reply comes once the chunk is in.
func (s *session) bdatCmd(now time.Time) {
	cmd := &s.cmd
	s.chunkLeft = cmd.ChunkSize
	s.chunkLast = cmd.Last
	s.chunkErr = nil
	switch {
	case !s.hasMail:
		s.chunkErr = replyNeedMailData
	case len(s.rcpts) == 0:
		s.chunkErr = replyNoRecipients
	case s.txFailed != nil:
		s.chunkErr = s.txFailed
	case cmd.ChunkSize > s.cfg.maxSize()-s.bodySize:
		// (Written so that it cannot overflow: 0 <= bodySize, and
		// bodySize was at most the bound, which may have fallen since.)
		// The excess is read and dropped, never buffered; the transaction
		// stays failed until BDAT LAST or RSET.
		r := replyTooBig
		if s.sizeOffered > 0 && cmd.ChunkSize <= s.sizeOffered-s.bodySize {
			r = replyTooBigNow // within what EHLO offered: the bound fell since
		}
		s.txFailed, s.txOutcome = r, sizeOutcome(r)
		s.chunkErr = r
	}
	if s.chunkErr == nil && !s.bdat {
		s.bdat = true
		s.beginMessage(now)
	}
	if s.chunkErr == nil && (s.noMemory || !s.hold(cmd.ChunkSize)) {
		s.msg.ReleaseData()
		s.releaseHeld()
		s.txFailed, s.txOutcome = replyNoMemory, OutcomeNoMemory
		s.chunkErr = replyNoMemory
	}
	if s.chunkErr == nil {
		s.bodySize += cmd.ChunkSize
	}
	s.state = stBDAT
	if s.chunkLeft == 0 {
		s.endChunk(now)
	}
}

func (s *session) endChunk(now time.Time) {
	s.state = stCommand
	if r := s.chunkErr; r != nil {
		s.chunkErr = nil
		s.fail(r)
		if r == s.txFailed && s.chunkLast {
			s.endTransaction(s.txOutcome, now)
		}
		return
	}
	if !s.chunkLast {
		s.out = append(s.out, "250 2.0.0 "...)
		s.out = strconv.AppendInt(s.out, s.cmd.ChunkSize, 10)
		s.out = append(s.out, " octets received\r\n"...)
		return
	}
	if !s.holdCopies() {
		s.fail(replyNoMemory)
		s.endTransaction(OutcomeNoMemory, now)
		return
	}
	s.submit(now)
}

// sizeRefusal is the reply to a message of n octets over the bound in
// force (settings.maxSize): 552 5.3.4 when it is also over the SIZE this
// session's EHLO offered (the client was told, RFC 1870 §6.1), 452 4.3.1
// when the bound fell since, as a broker's can (sink.SizeLimiter): a
// limit of ours the client could not know of is a temporary failure,
// never a permanent one.
func (s *session) sizeRefusal(n int64) *codec.Reply {
	if s.sizeOffered > 0 && n <= s.sizeOffered {
		return replyTooBigNow
	}
	return replyTooBig
}

// sizeOutcome is how a size refusal is counted.
func sizeOutcome(r *codec.Reply) Outcome {
	if r == replyTooBigNow {
		return OutcomeSinkFailed
	}
	return OutcomeTooBig
}

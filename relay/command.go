package relay

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/walrelay/walrelay/walstream"
)

// CommandKind is a replication command.
type CommandKind int

// The replication commands a walsender understands (repl_gram.y).
const (
	CmdIdentifySystem        CommandKind = iota + 1
	CmdTimelineHistory                   // TIMELINE_HISTORY n
	CmdShow                              // SHOW name
	CmdReadReplicationSlot               // READ_REPLICATION_SLOT s
	CmdCreateReplicationSlot             // CREATE_REPLICATION_SLOT s [TEMPORARY] {PHYSICAL | LOGICAL plugin} [options]
	CmdDropReplicationSlot               // DROP_REPLICATION_SLOT s [WAIT]
	CmdStartReplication                  // START_REPLICATION [SLOT s] [PHYSICAL | LOGICAL] X/X ...
	CmdBaseBackup                        // BASE_BACKUP [options]: only the raw text matters
	CmdAlterReplicationSlot              // ALTER_REPLICATION_SLOT s (options): PostgreSQL 17 on
	CmdUploadManifest                    // UPLOAD_MANIFEST: PostgreSQL 17 on
)

// LatestMajor is the newest PostgreSQL major whose replication grammar the
// parser knows; ParseCommand parses with it.
const LatestMajor = 18

// Command is one parsed replication command.
type Command struct {
	Kind       CommandKind
	Slot       string // lower-cased if it was a bare identifier, verbatim if quoted; "" = no SLOT clause
	Temporary  bool   // CREATE_REPLICATION_SLOT ... TEMPORARY
	Logical    bool   // a logical slot or logical streaming: parsed, refused by the server
	ReserveWAL bool   // CREATE_REPLICATION_SLOT ... PHYSICAL RESERVE_WAL or (RESERVE_WAL [bool])
	Wait       bool   // DROP_REPLICATION_SLOT s WAIT
	Setting    string // SHOW: the setting name (a.b for dotted names)
	Timeline   walstream.TimeLineID
	StartLSN   walstream.LSN
	Raw        string // the query text as received
}

// ErrEmptyQuery is returned for a query holding nothing but white space and
// semicolons; the server answers EmptyQueryResponse.
var ErrEmptyQuery = errors.New("empty query")

// maxIdentifierLen is NAMEDATALEN-1: PostgreSQL truncates longer identifiers.
const maxIdentifierLen = 63

// replKeywords are the keywords of a PostgreSQL 15 repl_scanner.l: upper case
// only, matched case-sensitively; any other word is an identifier. Those of
// later majors are in keywordSince.
var replKeywords = map[string]bool{
	"BASE_BACKUP": true, "IDENTIFY_SYSTEM": true, "READ_REPLICATION_SLOT": true, "SHOW": true,
	"TIMELINE": true, "START_REPLICATION": true, "CREATE_REPLICATION_SLOT": true,
	"DROP_REPLICATION_SLOT": true, "TIMELINE_HISTORY": true, "PHYSICAL": true, "RESERVE_WAL": true,
	"LOGICAL": true, "SLOT": true, "TEMPORARY": true, "TWO_PHASE": true, "EXPORT_SNAPSHOT": true,
	"NOEXPORT_SNAPSHOT": true, "USE_SNAPSHOT": true, "WAIT": true,
}

// keywordSince holds the keywords later majors added, with the first major
// that has them: before it they are identifiers.
var keywordSince = map[string]int{
	"ALTER_REPLICATION_SLOT": 17, "UPLOAD_MANIFEST": 17,
}

// commandKeywords are the keywords that may start a replication command.
var commandKeywords = map[string]CommandKind{
	"ALTER_REPLICATION_SLOT":  CmdAlterReplicationSlot,
	"UPLOAD_MANIFEST":         CmdUploadManifest,
	"IDENTIFY_SYSTEM":         CmdIdentifySystem,
	"TIMELINE_HISTORY":        CmdTimelineHistory,
	"SHOW":                    CmdShow,
	"READ_REPLICATION_SLOT":   CmdReadReplicationSlot,
	"CREATE_REPLICATION_SLOT": CmdCreateReplicationSlot,
	"DROP_REPLICATION_SLOT":   CmdDropReplicationSlot,
	"START_REPLICATION":       CmdStartReplication,
	"BASE_BACKUP":             CmdBaseBackup,
}

// ParseCommand parses one query with the grammar of LatestMajor.
func ParseCommand(query string) (Command, error) {
	return ParseCommandFor(query, LatestMajor)
}

// ParseCommandFor parses one query received in a simple Query message on a
// physical replication connection with the replication grammar of the given
// PostgreSQL major (14 on; 0 means LatestMajor), so that a relay answers as
// its upstream's walsender does. Errors are *PGError (SQLSTATE 42601 for
// syntax, 0A000 for anything that is not a replication command) or
// ErrEmptyQuery.
//
// Like the walsender, it looks only at the first token to decide whether the
// query is a replication command, so any SQL gets 0A000 whatever follows.
func ParseCommandFor(query string, major int) (Command, error) {
	if strings.Trim(query, " \t\n\r\f\v;") == "" {
		return Command{}, ErrEmptyQuery
	}
	if major == 0 {
		major = LatestMajor
	}
	p := &parser{lex: lexer{q: query, major: major}, major: major}
	first, err := p.next()
	if err != nil {
		return Command{}, err
	}
	kind, ok := commandKeywords[first.text]
	if first.kind != tokKeyword || !ok {
		return Command{}, errorf("0A000", "cannot execute SQL commands in WAL sender for physical replication")
	}
	cmd := Command{Kind: kind, Raw: query}
	if err := p.command(&cmd); err != nil {
		return Command{}, err
	}
	return cmd, nil
}

// command parses what follows the first keyword, up to the end of input.
func (p *parser) command(cmd *Command) error {
	var err error
	switch cmd.Kind {
	case CmdIdentifySystem:
	case CmdBaseBackup:
		// Passed through verbatim or refused, so the options (new or pre-15
		// syntax) are left to the server that runs it; only lex them.
		return p.skipToEnd()
	case CmdTimelineHistory:
		cmd.Timeline, err = p.timeline()
	case CmdShow:
		cmd.Setting, err = p.varName()
	case CmdReadReplicationSlot:
		cmd.Slot, err = p.varName()
	case CmdDropReplicationSlot:
		if cmd.Slot, err = p.ident(); err == nil {
			cmd.Wait, err = p.acceptKeyword("WAIT")
		}
	case CmdCreateReplicationSlot:
		return p.createSlot(cmd)
	case CmdAlterReplicationSlot:
		return p.alterSlot(cmd)
	case CmdUploadManifest:
	case CmdStartReplication:
		return p.startReplication(cmd)
	}
	if err != nil {
		return err
	}
	return p.end()
}

// createSlot parses the rest of
//
//	CREATE_REPLICATION_SLOT IDENT [TEMPORARY] PHYSICAL options
//	CREATE_REPLICATION_SLOT IDENT [TEMPORARY] LOGICAL IDENT options
//
// where options are '(' generic_option_list ')' or legacy keywords.
func (p *parser) createSlot(cmd *Command) error {
	opts, err := p.createSlotArgs(cmd)
	if err == nil {
		err = p.end()
	}
	if err != nil {
		return err
	}
	// Like the walsender: options are checked once the command has parsed.
	return applySlotOptions(cmd, opts, p.major)
}

// alterSlot parses the rest of ALTER_REPLICATION_SLOT IDENT '('
// generic_option_list ')' and checks the options as
// ParseAlterReplSlotOptions does, before the slot is looked up.
func (p *parser) alterSlot(cmd *Command) error {
	var err error
	if cmd.Slot, err = p.ident(); err != nil {
		return err
	}
	t, err := p.next()
	if err != nil {
		return err
	}
	if !t.isChar('(') {
		return syntaxError(t)
	}
	opts, err := p.genericOptions()
	if err == nil {
		err = p.end()
	}
	if err != nil {
		return err
	}
	given := map[string]bool{}
	for _, o := range opts {
		known := o.name == "failover" || o.name == "two_phase" && p.major >= 18
		if !known {
			return errorf("XX000", "unrecognized option: %s", o.name)
		}
		if given[o.name] {
			return errorf("42601", "conflicting or redundant options")
		}
		given[o.name] = true
		if _, ok := o.boolean(); !ok {
			return errorf("42601", "%s requires a Boolean value", o.name)
		}
	}
	return nil
}

func (p *parser) createSlotArgs(cmd *Command) ([]slotOption, error) {
	var err error
	if cmd.Slot, err = p.ident(); err != nil {
		return nil, err
	}
	if cmd.Temporary, err = p.acceptKeyword("TEMPORARY"); err != nil {
		return nil, err
	}
	t, err := p.next()
	switch {
	case err != nil:
		return nil, err
	case t.isKeyword("PHYSICAL"):
	case t.isKeyword("LOGICAL"):
		cmd.Logical = true
		if _, err := p.ident(); err != nil { // output plugin
			return nil, err
		}
	default:
		return nil, syntaxError(t)
	}
	t, err = p.peek()
	switch {
	case err != nil:
		return nil, err
	case t.isChar('(') && p.major < 15:
		// The parenthesized options came with PostgreSQL 15.
		return nil, syntaxError(t)
	case t.isChar('('):
		p.take()
		return p.genericOptions()
	}
	return p.legacySlotOptions()
}

// startReplication parses the rest of
//
//	START_REPLICATION [SLOT IDENT] [PHYSICAL] RECPTR [TIMELINE UCONST]
//	START_REPLICATION SLOT IDENT LOGICAL RECPTR ['(' IDENT [SCONST], ... ')']
func (p *parser) startReplication(cmd *Command) error {
	hasSlot, err := p.startReplicationArgs(cmd)
	if err == nil {
		err = p.end()
	}
	if err == nil && hasSlot && cmd.Slot == "" {
		// SLOT "" names no slot there is (and Slot == "" must keep meaning
		// no SLOT clause).
		return errorf("42704", "replication slot \"\" does not exist")
	}
	return err
}

func (p *parser) startReplicationArgs(cmd *Command) (hasSlot bool, err error) {
	if hasSlot, err = p.acceptKeyword("SLOT"); err != nil {
		return false, err
	}
	if hasSlot {
		if cmd.Slot, err = p.ident(); err != nil {
			return true, err
		}
	}
	t, err := p.peek()
	if err != nil {
		return hasSlot, err
	}
	switch {
	case t.isKeyword("LOGICAL") && hasSlot:
		p.take()
		cmd.Logical = true
	case t.isKeyword("PHYSICAL"):
		p.take()
	}
	if cmd.StartLSN, err = p.lsn(); err != nil {
		return hasSlot, err
	}
	if cmd.Logical {
		return hasSlot, p.pluginOptions()
	}
	timeline, err := p.acceptKeyword("TIMELINE")
	if err == nil && timeline {
		cmd.Timeline, err = p.timeline()
	}
	return hasSlot, err
}

// pluginOptions parses the optional '(' IDENT [SCONST], ... ')' of logical
// streaming. The values do not matter: logical streaming is refused.
func (p *parser) pluginOptions() error {
	if ok, err := p.acceptChar('('); err != nil || !ok {
		return err
	}
	for {
		if _, err := p.ident(); err != nil {
			return err
		}
		t, err := p.next()
		if err != nil {
			return err
		}
		if t.kind == tokString {
			if t, err = p.next(); err != nil {
				return err
			}
		}
		switch {
		case t.isChar(')'):
			return nil
		case !t.isChar(','):
			return syntaxError(t)
		}
	}
}

// varName parses IDENT ['.' IDENT ...] (SHOW, READ_REPLICATION_SLOT).
func (p *parser) varName() (string, error) {
	name, err := p.ident()
	if err != nil {
		return "", err
	}
	for {
		ok, err := p.acceptChar('.')
		if err != nil || !ok {
			return name, err
		}
		part, err := p.ident()
		if err != nil {
			return "", err
		}
		name += "." + part
	}
}

// timeline parses a UCONST that must be a timeline ID (1 or more).
func (p *parser) timeline() (walstream.TimeLineID, error) {
	t, err := p.next()
	if err != nil {
		return 0, err
	}
	if t.kind != tokUint {
		return 0, syntaxError(t)
	}
	v, err := strconv.ParseUint(t.text, 10, 32)
	switch {
	case err != nil:
		return 0, errorf("42601", "invalid timeline %s", t.text)
	case v == 0:
		return 0, errorf("42601", "invalid timeline 0")
	}
	return walstream.TimeLineID(v), nil
}

// lsn parses a RECPTR.
func (p *parser) lsn() (walstream.LSN, error) {
	t, err := p.next()
	if err != nil {
		return 0, err
	}
	if t.kind != tokLSN {
		return 0, syntaxError(t)
	}
	return t.lsn, nil
}

// skipToEnd lexes the rest of the query, reporting only lexical errors.
func (p *parser) skipToEnd() error {
	for {
		t, err := p.next()
		if err != nil || t.kind == tokEOF {
			return err
		}
	}
}

// slotOption is one CREATE_REPLICATION_SLOT option: a name and, unless kind
// is tokEOF, a value that was an identifier, a string or an integer.
type slotOption struct {
	name  string
	kind  tokKind
	value string
}

// genericOptions parses generic_option_list ')' after the '(':
// name [IDENT | SCONST | UCONST], where the name may be a keyword.
func (p *parser) genericOptions() ([]slotOption, error) {
	var opts []slotOption
	for {
		name, err := p.identOrKeyword()
		if err != nil {
			return nil, err
		}
		opt := slotOption{name: name}
		t, err := p.next()
		if err != nil {
			return nil, err
		}
		if t.kind == tokIdent || t.kind == tokString || t.kind == tokUint {
			opt.kind, opt.value = t.kind, t.text
			if t, err = p.next(); err != nil {
				return nil, err
			}
		}
		opts = append(opts, opt)
		switch {
		case t.isChar(')'):
			return opts, nil
		case !t.isChar(','):
			return nil, syntaxError(t)
		}
	}
}

// legacySlotOptions are the pre-15 keyword options, named as the walsender
// names them.
var legacySlotOptions = map[string]slotOption{
	"RESERVE_WAL":       {name: "reserve_wal"},
	"TWO_PHASE":         {name: "two_phase"},
	"EXPORT_SNAPSHOT":   {name: "snapshot", kind: tokString, value: "export"},
	"NOEXPORT_SNAPSHOT": {name: "snapshot", kind: tokString, value: "nothing"},
	"USE_SNAPSHOT":      {name: "snapshot", kind: tokString, value: "use"},
}

// legacySlotOptions parses a run of pre-15 keyword options.
func (p *parser) legacySlotOptions() ([]slotOption, error) {
	var opts []slotOption
	for {
		t, err := p.peek()
		if err != nil {
			return nil, err
		}
		opt, ok := legacySlotOptions[t.text]
		if t.kind != tokKeyword || !ok {
			return opts, nil
		}
		p.take()
		opts = append(opts, opt)
	}
}

// applySlotOptions checks the options of a physical slot as the walsender
// of the major does (parseCreateReplSlotOptions): reserve_wal is the only
// one, the logical-only ones (failover from 17 on) conflict, anything else is
// unknown. Logical slots are refused by the server, so their options are not
// looked at.
func applySlotOptions(cmd *Command, opts []slotOption, major int) error {
	if cmd.Logical {
		return nil
	}
	reserveGiven := false
	for _, o := range opts {
		switch o.name {
		case "reserve_wal":
			if reserveGiven {
				return errorf("42601", "conflicting or redundant options")
			}
			reserveGiven = true
			v, ok := o.boolean()
			if !ok {
				return errorf("42601", "%s requires a Boolean value", o.name)
			}
			cmd.ReserveWAL = v
		case "snapshot", "two_phase":
			return errorf("42601", "conflicting or redundant options")
		case "failover":
			if major >= 17 {
				return errorf("42601", "conflicting or redundant options")
			}
			return errorf("XX000", "unrecognized option: %s", o.name)
		default:
			// An elog in the walsender, hence XX000.
			return errorf("XX000", "unrecognized option: %s", o.name)
		}
	}
	return nil
}

// boolean reads the option's value as defGetBoolean does: no value is true;
// integers 0 and 1; true, false, on, off in any case.
func (o slotOption) boolean() (bool, bool) {
	switch o.kind {
	case tokEOF:
		return true, true
	case tokUint:
		switch v, err := strconv.ParseUint(o.value, 10, 64); {
		case err == nil && v == 0:
			return false, true
		case err == nil && v == 1:
			return true, true
		}
		return false, false
	}
	switch {
	case strings.EqualFold(o.value, "true"), strings.EqualFold(o.value, "on"):
		return true, true
	case strings.EqualFold(o.value, "false"), strings.EqualFold(o.value, "off"):
		return false, true
	}
	return false, false
}

// parser is a recursive-descent parser over a lexer with one token of
// lookahead; tokens are lexed only as the grammar reaches them, so a lexical
// error after a syntax error is never reported, as with bison.
type parser struct {
	major   int
	lex     lexer
	ahead   token
	hasNext bool
}

func (p *parser) peek() (token, error) {
	if !p.hasNext {
		t, err := p.lex.next()
		if err != nil {
			return token{}, err
		}
		p.ahead, p.hasNext = t, true
	}
	return p.ahead, nil
}

// take consumes the token peek returned.
func (p *parser) take() { p.hasNext = false }

func (p *parser) next() (token, error) {
	t, err := p.peek()
	p.take()
	return t, err
}

func (p *parser) acceptKeyword(kw string) (bool, error) {
	t, err := p.peek()
	if err != nil || !t.isKeyword(kw) {
		return false, err
	}
	p.take()
	return true, nil
}

func (p *parser) acceptChar(c byte) (bool, error) {
	t, err := p.peek()
	if err != nil || !t.isChar(c) {
		return false, err
	}
	p.take()
	return true, nil
}

func (p *parser) ident() (string, error) {
	t, err := p.next()
	if err != nil {
		return "", err
	}
	if t.kind != tokIdent {
		return "", syntaxError(t)
	}
	return t.text, nil
}

// identOrKeyword is an identifier or a keyword, which names an option in
// lower case.
func (p *parser) identOrKeyword() (string, error) {
	t, err := p.next()
	switch {
	case err != nil:
		return "", err
	case t.kind == tokIdent:
		return t.text, nil
	case t.kind == tokKeyword:
		return strings.ToLower(t.text), nil
	}
	return "", syntaxError(t)
}

// end accepts an optional semicolon and then requires the end of input.
func (p *parser) end() error {
	if _, err := p.acceptChar(';'); err != nil {
		return err
	}
	t, err := p.next()
	if err != nil {
		return err
	}
	if t.kind != tokEOF {
		return syntaxError(t)
	}
	return nil
}

// syntaxError is the walsender's bare "syntax error" (every major, 14 to
// 18); where it is goes in the detail, which the server does not send.
func syntaxError(t token) *PGError {
	e := errorf("42601", "syntax error")
	e.Detail = "at end of input"
	if t.kind != tokEOF {
		e.Detail = fmt.Sprintf("at or near \"%s\"", t.raw)
	}
	return e
}

type tokKind int

const (
	tokEOF     tokKind = iota
	tokKeyword         // text: the keyword
	tokIdent           // text: lower-cased if bare, verbatim if quoted; truncated to 63 bytes
	tokLSN             // lsn: the value
	tokUint            // text: the digits
	tokString          // text: the literal's value
	tokChar            // any other byte: ( ) , ; . and the rest
)

type token struct {
	kind tokKind
	text string
	raw  string // as written, for error messages
	lsn  walstream.LSN
}

func (t token) isKeyword(kw string) bool { return t.kind == tokKeyword && t.text == kw }
func (t token) isChar(c byte) bool       { return t.kind == tokChar && t.text[0] == c }

// lexer splits a query into tokens the way repl_scanner.l does: the longest
// match wins, so "0/3000000" and even "abc/1" are LSNs, "SHOWx" is an
// identifier, and a byte it does not know is a token of its own.
type lexer struct {
	q     string
	pos   int
	major int
}

func (l *lexer) next() (token, error) {
	for l.pos < len(l.q) && isSpace(l.q[l.pos]) {
		l.pos++
	}
	if l.pos >= len(l.q) {
		return token{kind: tokEOF}, nil
	}
	start, c := l.pos, l.q[l.pos]
	switch {
	case c == '\'' || c == '"':
		s, n, ok := unquote(l.q[start:], c)
		if !ok {
			// repl_scanner.l says this for both kinds of quote.
			return token{}, errorf("42601", "unterminated quoted string")
		}
		l.pos += n
		if c == '\'' {
			return token{kind: tokString, text: s, raw: l.q[start:l.pos]}, nil
		}
		return token{kind: tokIdent, text: truncateIdent(s), raw: l.q[start:l.pos]}, nil
	case isHex(c):
		if n := lsnLen(l.q[start:]); n > 0 {
			l.pos += n
			return l.lsnToken(l.q[start:l.pos])
		}
	}
	switch {
	case isDigit(c):
		l.pos = scan(l.q, start, isDigit)
		return token{kind: tokUint, text: l.q[start:l.pos], raw: l.q[start:l.pos]}, nil
	case isIdentStart(c):
		l.pos = scan(l.q, start, isIdentCont)
		word := l.q[start:l.pos]
		if since, ok := keywordSince[word]; replKeywords[word] || ok && l.major >= since {
			return token{kind: tokKeyword, text: word, raw: word}, nil
		}
		return token{kind: tokIdent, text: truncateIdent(asciiLower(word)), raw: word}, nil
	}
	l.pos++
	return token{kind: tokChar, text: l.q[start:l.pos], raw: l.q[start:l.pos]}, nil
}

// lsnToken converts hex/hex; each half must fit in 32 bits.
func (l *lexer) lsnToken(s string) (token, error) {
	hi, lo, _ := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	o, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return token{}, errorf("42601", "invalid streaming start location")
	}
	return token{kind: tokLSN, raw: s, lsn: walstream.LSN(h<<32 | o)}, nil
}

// unquote reads a literal opened by s[0] == q in which a doubled quote
// stands for one. It returns the value and the bytes consumed.
func unquote(s string, q byte) (string, int, bool) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] != q {
			b.WriteByte(s[i])
			continue
		}
		if i+1 < len(s) && s[i+1] == q {
			b.WriteByte(q)
			i++
			continue
		}
		return b.String(), i + 1, true
	}
	return "", 0, false
}

// lsnLen returns the length of hex+/hex+ at the start of s, or 0.
func lsnLen(s string) int {
	i := scan(s, 0, isHex)
	if i == 0 || i+1 >= len(s) || s[i] != '/' || !isHex(s[i+1]) {
		return 0
	}
	return scan(s, i+1, isHex)
}

func scan(s string, i int, ok func(byte) bool) int {
	for i < len(s) && ok(s[i]) {
		i++
	}
	return i
}

// asciiLower folds A-Z only, as PostgreSQL does for a multibyte server
// encoding: "Ä" stays "Ä".
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// truncateIdent cuts an identifier to NAMEDATALEN-1 bytes without splitting
// a UTF-8 character, as PostgreSQL does (with a NOTICE we do not send).
func truncateIdent(s string) string {
	if len(s) <= maxIdentifierLen {
		return s
	}
	n := maxIdentifierLen
	for n > 0 && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}
func isIdentCont(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }

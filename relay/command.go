package relay

import (
	"errors"
	"strconv"
	"strings"

	"github.com/walrelay/walrelay/walstream"
)

// CommandKind is a replication command.
type CommandKind int

const (
	CmdIdentifySystem CommandKind = iota + 1
	CmdTimelineHistory
	CmdShow
	CmdReadReplicationSlot
	CmdCreateReplicationSlot
	CmdDropReplicationSlot
	CmdStartReplication
	CmdBaseBackup
)

// Command is one parsed replication command.
type Command struct {
	Kind       CommandKind
	Slot       string // lower-cased if it was a bare identifier, verbatim if quoted
	Temporary  bool
	Logical    bool
	ReserveWAL bool
	Wait       bool
	Setting    string // SHOW
	Timeline   walstream.TimeLineID
	StartLSN   walstream.LSN
	Raw        string
}

// ErrEmptyQuery is returned for a query with no command in it; the server
// answers EmptyQueryResponse.
var ErrEmptyQuery = errors.New("empty query")

// The grammar is PostgreSQL's repl_gram.y for the commands a physical
// walsender serves; keywords are upper case and case-sensitive, bare
// identifiers are lower-cased, "quoted" ones kept verbatim.
var replKeywords = map[string]bool{
	"BASE_BACKUP": true, "IDENTIFY_SYSTEM": true, "READ_REPLICATION_SLOT": true, "SHOW": true,
	"START_REPLICATION": true, "CREATE_REPLICATION_SLOT": true, "DROP_REPLICATION_SLOT": true,
	"TIMELINE_HISTORY": true, "WAIT": true, "TIMELINE": true, "PHYSICAL": true, "LOGICAL": true,
	"SLOT": true, "RESERVE_WAL": true, "TEMPORARY": true, "TWO_PHASE": true, "EXPORT_SNAPSHOT": true,
	"NOEXPORT_SNAPSHOT": true, "USE_SNAPSHOT": true,
	// Old-style BASE_BACKUP options.
	"LABEL": true, "PROGRESS": true, "FAST": true, "WAL": true, "NOWAIT": true, "MAX_RATE": true,
	"TABLESPACE_MAP": true, "NOVERIFY_CHECKSUMS": true, "MANIFEST": true, "MANIFEST_CHECKSUMS": true,
}

// commandKeywords are the keywords that start a replication command.
var commandKeywords = map[string]CommandKind{
	"IDENTIFY_SYSTEM":         CmdIdentifySystem,
	"TIMELINE_HISTORY":        CmdTimelineHistory,
	"SHOW":                    CmdShow,
	"READ_REPLICATION_SLOT":   CmdReadReplicationSlot,
	"CREATE_REPLICATION_SLOT": CmdCreateReplicationSlot,
	"DROP_REPLICATION_SLOT":   CmdDropReplicationSlot,
	"START_REPLICATION":       CmdStartReplication,
	"BASE_BACKUP":             CmdBaseBackup,
}

type tokKind int

const (
	tokEOF tokKind = iota
	tokKeyword
	tokIdent
	tokLSN
	tokUint
	tokString
	tokPunct // ( ) , ; .
)

type token struct {
	kind tokKind
	text string // keyword, identifier (already folded), literal, punctuation
}

// lex splits a replication command into tokens.
func lex(q string) ([]token, error) {
	var toks []token
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '(' || c == ')' || c == ',' || c == ';' || c == '.':
			toks = append(toks, token{tokPunct, string(c)})
			i++
		case c == '"':
			s, n, ok := quoted(q[i:], '"')
			if !ok {
				return nil, errorf("42601", "unterminated quoted identifier")
			}
			if s == "" {
				return nil, errorf("42601", "zero-length delimited identifier")
			}
			toks = append(toks, token{tokIdent, s})
			i += n
		case c == '\'':
			s, n, ok := quoted(q[i:], '\'')
			if !ok {
				return nil, errorf("42601", "unterminated quoted string")
			}
			toks = append(toks, token{tokString, s})
			i += n
		default:
			if n := lsnLen(q[i:]); n > 0 {
				toks = append(toks, token{tokLSN, q[i : i+n]})
				i += n
				continue
			}
			if isDigit(c) {
				j := i
				for j < len(q) && isDigit(q[j]) {
					j++
				}
				toks = append(toks, token{tokUint, q[i:j]})
				i = j
				continue
			}
			if isIdentStart(c) {
				j := i + 1
				for j < len(q) && (isIdentStart(q[j]) || isDigit(q[j]) || q[j] == '$') {
					j++
				}
				word := q[i:j]
				if replKeywords[word] {
					toks = append(toks, token{tokKeyword, word})
				} else {
					toks = append(toks, token{tokIdent, strings.ToLower(word)})
				}
				i = j
				continue
			}
			return nil, errorf("42601", "syntax error at or near \"%c\"", c)
		}
	}
	return toks, nil
}

// quoted reads a quoted token starting at s[0] == q, where a doubled quote
// stands for one. It returns the content and the bytes consumed.
func quoted(s string, q byte) (string, int, bool) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		if s[i] == q {
			if i+1 < len(s) && s[i+1] == q {
				b.WriteByte(q)
				i++
				continue
			}
			return b.String(), i + 1, true
		}
		b.WriteByte(s[i])
	}
	return "", 0, false
}

// lsnLen returns the length of an X/X token at the start of s, or 0.
func lsnLen(s string) int {
	i := 0
	for i < len(s) && isHex(s[i]) {
		i++
	}
	if i == 0 || i >= len(s) || s[i] != '/' {
		return 0
	}
	j := i + 1
	for j < len(s) && isHex(s[j]) {
		j++
	}
	if j == i+1 {
		return 0
	}
	// An identifier character right after would make this something else.
	if j < len(s) && (isIdentStart(s[j]) || s[j] == '$') {
		return 0
	}
	return j
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
func isHex(c byte) bool   { return isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' }
func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

// parser walks the token list.
type parser struct {
	toks []token
	pos  int
}

func (p *parser) peek() token {
	if p.pos < len(p.toks) {
		return p.toks[p.pos]
	}
	return token{kind: tokEOF}
}

func (p *parser) next() token {
	t := p.peek()
	if p.pos < len(p.toks) {
		p.pos++
	}
	return t
}

func (p *parser) acceptKeyword(kw string) bool {
	if t := p.peek(); t.kind == tokKeyword && t.text == kw {
		p.pos++
		return true
	}
	return false
}

func (p *parser) acceptPunct(c string) bool {
	if t := p.peek(); t.kind == tokPunct && t.text == c {
		p.pos++
		return true
	}
	return false
}

func (p *parser) syntaxError() *PGError {
	t := p.peek()
	if t.kind == tokEOF {
		return errorf("42601", "syntax error at end of input")
	}
	return errorf("42601", "syntax error at or near \"%s\"", t.text)
}

func (p *parser) ident() (string, error) {
	if t := p.peek(); t.kind == tokIdent {
		p.pos++
		return t.text, nil
	}
	return "", p.syntaxError()
}

func (p *parser) timeline() (walstream.TimeLineID, error) {
	t := p.peek()
	if t.kind != tokUint {
		return 0, p.syntaxError()
	}
	p.pos++
	v, err := strconv.ParseUint(t.text, 10, 32)
	if err != nil {
		return 0, errorf("42601", "invalid timeline %s", t.text)
	}
	if v == 0 {
		return 0, errorf("42601", "invalid timeline %d", v)
	}
	return walstream.TimeLineID(v), nil
}

// end accepts an optional trailing semicolon and requires the end.
func (p *parser) end() error {
	p.acceptPunct(";")
	if p.peek().kind != tokEOF {
		return p.syntaxError()
	}
	return nil
}

// ParseCommand parses one query received on a replication connection.
func ParseCommand(query string) (Command, error) {
	toks, err := lex(query)
	if err != nil {
		return Command{}, err
	}
	p := &parser{toks: toks}
	for p.acceptPunct(";") {
	}
	first := p.next()
	if first.kind == tokEOF {
		return Command{}, ErrEmptyQuery
	}
	kind, ok := commandKeywords[first.text]
	if first.kind != tokKeyword || !ok {
		return Command{}, errorf("0A000", "cannot execute SQL commands in WAL sender for physical replication")
	}
	cmd := Command{Kind: kind, Raw: query}
	switch kind {
	case CmdIdentifySystem:
	case CmdBaseBackup:
		// Options do not matter: the command is refused or passed through.
		return cmd, nil
	case CmdTimelineHistory:
		if cmd.Timeline, err = p.timeline(); err != nil {
			return Command{}, err
		}
	case CmdShow:
		if cmd.Setting, err = p.varName(); err != nil {
			return Command{}, err
		}
	case CmdReadReplicationSlot:
		if cmd.Slot, err = p.ident(); err != nil {
			return Command{}, err
		}
	case CmdDropReplicationSlot:
		if cmd.Slot, err = p.ident(); err != nil {
			return Command{}, err
		}
		cmd.Wait = p.acceptKeyword("WAIT")
	case CmdCreateReplicationSlot:
		if err := p.createSlot(&cmd); err != nil {
			return Command{}, err
		}
	case CmdStartReplication:
		if err := p.startReplication(&cmd); err != nil {
			return Command{}, err
		}
	}
	if err := p.end(); err != nil {
		return Command{}, err
	}
	return cmd, nil
}

// varName is an identifier, possibly dotted (SHOW walrelay.compression).
func (p *parser) varName() (string, error) {
	name, err := p.identOrKeyword()
	if err != nil {
		return "", err
	}
	for p.acceptPunct(".") {
		part, err := p.identOrKeyword()
		if err != nil {
			return "", err
		}
		name += "." + part
	}
	return name, nil
}

func (p *parser) identOrKeyword() (string, error) {
	t := p.peek()
	switch t.kind {
	case tokIdent:
		p.pos++
		return t.text, nil
	case tokKeyword:
		p.pos++
		return strings.ToLower(t.text), nil
	}
	return "", p.syntaxError()
}

func (p *parser) createSlot(cmd *Command) error {
	var err error
	if cmd.Slot, err = p.ident(); err != nil {
		return err
	}
	cmd.Temporary = p.acceptKeyword("TEMPORARY")
	switch {
	case p.acceptKeyword("PHYSICAL"):
	case p.acceptKeyword("LOGICAL"):
		cmd.Logical = true
		if _, err := p.ident(); err != nil { // output plugin
			return err
		}
	default:
		return p.syntaxError()
	}
	if p.acceptPunct("(") {
		return p.slotOptions(cmd)
	}
	// Old syntax: bare option keywords.
	for {
		switch {
		case p.acceptKeyword("RESERVE_WAL"):
			cmd.ReserveWAL = true
		case p.acceptKeyword("EXPORT_SNAPSHOT"), p.acceptKeyword("NOEXPORT_SNAPSHOT"),
			p.acceptKeyword("USE_SNAPSHOT"), p.acceptKeyword("TWO_PHASE"):
			if !cmd.Logical {
				return errorf("42601", "unrecognized option: %s", strings.ToLower(p.toks[p.pos-1].text))
			}
		default:
			return nil
		}
	}
}

// slotOptions parses "(name [value], ...)" after the opening parenthesis.
func (p *parser) slotOptions(cmd *Command) error {
	for {
		name, err := p.identOrKeyword()
		if err != nil {
			return err
		}
		val := ""
		if t := p.peek(); t.kind == tokIdent || t.kind == tokString || t.kind == tokUint || t.kind == tokKeyword {
			p.pos++
			val = strings.ToLower(t.text)
		}
		switch {
		case name == "reserve_wal" && !cmd.Logical:
			b, ok := parseBool(val)
			if !ok {
				return errorf("22023", "reserve_wal requires a Boolean value")
			}
			cmd.ReserveWAL = b
		case cmd.Logical:
			// Refused later; options do not matter.
		default:
			return errorf("42601", "unrecognized option: %s", name)
		}
		if p.acceptPunct(")") {
			return nil
		}
		if !p.acceptPunct(",") {
			return p.syntaxError()
		}
	}
}

func parseBool(v string) (bool, bool) {
	switch v {
	case "", "true", "on", "yes", "1", "t", "y":
		return true, true
	case "false", "off", "no", "0", "f", "n":
		return false, true
	}
	return false, false
}

func (p *parser) startReplication(cmd *Command) error {
	var err error
	if p.acceptKeyword("SLOT") {
		if cmd.Slot, err = p.ident(); err != nil {
			return err
		}
	}
	if p.acceptKeyword("LOGICAL") {
		cmd.Logical = true
	} else {
		p.acceptKeyword("PHYSICAL")
	}
	t := p.peek()
	if t.kind != tokLSN {
		return p.syntaxError()
	}
	p.pos++
	hi, lo, _ := strings.Cut(t.text, "/")
	if len(hi) > 8 || len(lo) > 8 {
		return errorf("42601", "invalid streaming start location")
	}
	if cmd.StartLSN, err = walstream.ParseLSN(t.text); err != nil {
		return errorf("42601", "invalid streaming start location")
	}
	if cmd.Logical {
		if cmd.Slot == "" {
			return p.syntaxError()
		}
		if p.acceptPunct("(") {
			depth := 1
			for depth > 0 {
				switch t := p.next(); {
				case t.kind == tokEOF:
					return p.syntaxError()
				case t.kind == tokPunct && t.text == "(":
					depth++
				case t.kind == tokPunct && t.text == ")":
					depth--
				}
			}
		}
		return nil
	}
	if p.acceptKeyword("TIMELINE") {
		if cmd.Timeline, err = p.timeline(); err != nil {
			return err
		}
	}
	return nil
}

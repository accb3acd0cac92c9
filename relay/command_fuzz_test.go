package relay

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// FuzzParseCommand: the parser never panics, every error is a *PGError
// (or ErrEmptyQuery), and whatever it accepts is a well-formed command that
// parses again to the same thing, also when printed back in canonical form.
// The corpus is the unit test tables plus testdata/fuzz/FuzzParseCommand.
func FuzzParseCommand(f *testing.F) {
	for _, tt := range commandTests {
		f.Add(tt.q)
	}
	for _, tt := range commandErrorTests {
		f.Add(tt.q)
	}
	for _, tt := range majorCommandTests {
		f.Add(tt.q)
	}
	f.Fuzz(func(t *testing.T, q string) {
		// The grammars of earlier majors are subsets: what they accept the
		// latest does too, apart from the words that became keywords.
		for major := 14; major < LatestMajor; major++ {
			if _, err := ParseCommandFor(q, major); err != nil {
				checkParseError(t, q, err)
			}
		}
		cmd, err := ParseCommand(q)
		if err != nil {
			checkParseError(t, q, err)
			return
		}
		if cmd.Kind < CmdIdentifySystem || cmd.Kind > CmdUploadManifest {
			t.Fatalf("ParseCommand(%q): kind %d", q, cmd.Kind)
		}
		if cmd.Raw != q {
			t.Fatalf("ParseCommand(%q): Raw %q", q, cmd.Raw)
		}
		if again, err := ParseCommand(q); err != nil || again != cmd {
			t.Fatalf("ParseCommand(%q) not deterministic: %+v / %+v %v", q, cmd, again, err)
		}
		checkCommandFields(t, q, cmd)
		if c, ok := canonical(cmd); ok {
			got, err := ParseCommand(c)
			got.Raw = cmd.Raw
			if err != nil || got != cmd {
				t.Fatalf("ParseCommand(%q) = %+v, but its canonical form %q parses to %+v, %v", q, cmd, c, got, err)
			}
		}
	})
}

func checkParseError(t *testing.T, q string, err error) {
	t.Helper()
	if errors.Is(err, ErrEmptyQuery) {
		if strings.Trim(q, " \t\n\r\f\v;") != "" {
			t.Fatalf("ParseCommand(%q): ErrEmptyQuery for a query with text", q)
		}
		return
	}
	var pe *PGError
	if !errors.As(err, &pe) {
		t.Fatalf("ParseCommand(%q): error of type %T: %v", q, err, err)
	}
	if pe.Severity != "ERROR" || len(pe.Code) != 5 || pe.Message == "" {
		t.Fatalf("ParseCommand(%q): malformed error %+v", q, pe)
	}
}

// checkCommandFields checks that only the fields a command has are set.
func checkCommandFields(t *testing.T, q string, cmd Command) {
	t.Helper()
	bad := func(what string) { t.Fatalf("ParseCommand(%q) = %+v: %s", q, cmd, what) }
	if cmd.Temporary || cmd.ReserveWAL {
		if cmd.Kind != CmdCreateReplicationSlot {
			bad("slot creation flags on another command")
		}
		if cmd.ReserveWAL && cmd.Logical {
			bad("RESERVE_WAL on a logical slot")
		}
	}
	if cmd.Wait && cmd.Kind != CmdDropReplicationSlot {
		bad("WAIT on another command")
	}
	if cmd.Setting != "" && cmd.Kind != CmdShow {
		bad("setting on another command")
	}
	if cmd.StartLSN != 0 && cmd.Kind != CmdStartReplication {
		bad("start LSN on another command")
	}
	switch cmd.Kind {
	case CmdTimelineHistory:
		if cmd.Timeline == 0 {
			bad("timeline 0")
		}
	case CmdStartReplication:
		if cmd.Logical && (cmd.Slot == "" || cmd.Timeline != 0) {
			bad("logical streaming without a slot or with a timeline")
		}
	default:
		if cmd.Timeline != 0 {
			bad("timeline on another command")
		}
	}
	if cmd.Logical && cmd.Kind != CmdCreateReplicationSlot && cmd.Kind != CmdStartReplication {
		bad("logical on another command")
	}
	if len(cmd.Slot) > maxIdentifierLen && cmd.Kind != CmdReadReplicationSlot {
		bad("slot name longer than an identifier")
	}
}

// canonical prints a command back with quoted identifiers, for the commands
// that keep everything they were given.
func canonical(cmd Command) (string, bool) {
	quote := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	switch cmd.Kind {
	case CmdIdentifySystem:
		return "IDENTIFY_SYSTEM", true
	case CmdTimelineHistory:
		return fmt.Sprintf("TIMELINE_HISTORY %d", cmd.Timeline), true
	case CmdShow:
		return "SHOW " + quote(cmd.Setting), len(cmd.Setting) <= maxIdentifierLen
	case CmdDropReplicationSlot:
		s := "DROP_REPLICATION_SLOT " + quote(cmd.Slot)
		if cmd.Wait {
			s += " WAIT"
		}
		return s, true
	case CmdCreateReplicationSlot:
		if cmd.Logical {
			return "", false
		}
		s := "CREATE_REPLICATION_SLOT " + quote(cmd.Slot)
		if cmd.Temporary {
			s += " TEMPORARY"
		}
		return s + fmt.Sprintf(" PHYSICAL (RESERVE_WAL %t)", cmd.ReserveWAL), true
	case CmdStartReplication:
		if cmd.Logical {
			return "", false
		}
		s := "START_REPLICATION "
		if cmd.Slot != "" {
			s += "SLOT " + quote(cmd.Slot) + " "
		}
		s += "PHYSICAL " + cmd.StartLSN.String()
		if cmd.Timeline != 0 {
			s += fmt.Sprintf(" TIMELINE %d", cmd.Timeline)
		}
		return s, true
	}
	return "", false
}

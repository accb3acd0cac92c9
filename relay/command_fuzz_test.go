package relay

import (
	"errors"
	"testing"
)

// FuzzParseCommand: the parser never panics, and whatever it accepts is a
// well-formed command that parses the same way again.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{
		"IDENTIFY_SYSTEM", "TIMELINE_HISTORY 2", "SHOW wal_segment_size", `READ_REPLICATION_SLOT "s"`,
		`CREATE_REPLICATION_SLOT "pg_basebackup_1234" TEMPORARY PHYSICAL ( RESERVE_WAL)`,
		`CREATE_REPLICATION_SLOT "x" PHYSICAL RESERVE_WAL`, `DROP_REPLICATION_SLOT "x" WAIT`,
		"START_REPLICATION 0/3000000 TIMELINE 1", `START_REPLICATION SLOT "a""b" PHYSICAL 16/B374D848 TIMELINE 3;`,
		`START_REPLICATION SLOT l LOGICAL 0/0 ("a" 'b', c)`, "BASE_BACKUP (LABEL 'x', WAL)", "SELECT 1", "",
		`CREATE_REPLICATION_SLOT "x`, "SHOW a.b.c",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		cmd, err := ParseCommand(q)
		if err != nil {
			var pe *PGError
			if !errors.Is(err, ErrEmptyQuery) && !errors.As(err, &pe) {
				t.Fatalf("ParseCommand(%q): error of type %T", q, err)
			}
			if pe != nil && (pe.Code == "" || pe.Message == "") {
				t.Fatalf("ParseCommand(%q): incomplete error %+v", q, pe)
			}
			return
		}
		if cmd.Kind < CmdIdentifySystem || cmd.Kind > CmdBaseBackup {
			t.Fatalf("ParseCommand(%q): kind %d", q, cmd.Kind)
		}
		if cmd.Raw != q {
			t.Fatalf("Raw %q != %q", cmd.Raw, q)
		}
		again, err := ParseCommand(q)
		if err != nil || again != cmd {
			t.Fatalf("ParseCommand(%q) not deterministic: %+v / %+v %v", q, cmd, again, err)
		}
	})
}

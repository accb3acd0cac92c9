package relay

import (
	"errors"
	"strings"
	"testing"

	"github.com/walrelay/walrelay/walstream"
)

// commandTests are queries ParseCommand accepts. The first group is what
// the walreceiver, pg_receivewal and pg_basebackup send; the table also
// seeds FuzzParseCommand.
var commandTests = []struct {
	q    string
	want Command
}{
	// walreceiver
	{"IDENTIFY_SYSTEM", Command{Kind: CmdIdentifySystem}},
	{"TIMELINE_HISTORY 2", Command{Kind: CmdTimelineHistory, Timeline: 2}},
	{"START_REPLICATION 0/3000000 TIMELINE 1", Command{Kind: CmdStartReplication, StartLSN: 0x3000000, Timeline: 1}},
	{`START_REPLICATION SLOT "pg_walreceiver_1234" 0/5000000 TIMELINE 2`,
		Command{Kind: CmdStartReplication, Slot: "pg_walreceiver_1234", StartLSN: 0x5000000, Timeline: 2}},
	{`CREATE_REPLICATION_SLOT "pg_walreceiver_1234" TEMPORARY PHYSICAL`,
		Command{Kind: CmdCreateReplicationSlot, Slot: "pg_walreceiver_1234", Temporary: true}},
	// pg_receivewal
	{"SHOW data_directory_mode", Command{Kind: CmdShow, Setting: "data_directory_mode"}},
	{"SHOW wal_segment_size", Command{Kind: CmdShow, Setting: "wal_segment_size"}},
	{`READ_REPLICATION_SLOT "s"`, Command{Kind: CmdReadReplicationSlot, Slot: "s"}},
	{`START_REPLICATION SLOT "pg_receivewal_slot" 0/1000000 TIMELINE 1`,
		Command{Kind: CmdStartReplication, Slot: "pg_receivewal_slot", StartLSN: 0x1000000, Timeline: 1}},
	{`CREATE_REPLICATION_SLOT "x" PHYSICAL RESERVE_WAL`, Command{Kind: CmdCreateReplicationSlot, Slot: "x", ReserveWAL: true}},
	{`CREATE_REPLICATION_SLOT "x" PHYSICAL (RESERVE_WAL)`, Command{Kind: CmdCreateReplicationSlot, Slot: "x", ReserveWAL: true}},
	{`DROP_REPLICATION_SLOT "x" WAIT`, Command{Kind: CmdDropReplicationSlot, Slot: "x", Wait: true}},
	{`DROP_REPLICATION_SLOT "x"`, Command{Kind: CmdDropReplicationSlot, Slot: "x"}},
	// pg_basebackup
	{`CREATE_REPLICATION_SLOT "pg_basebackup_1234" TEMPORARY PHYSICAL ( RESERVE_WAL)`,
		Command{Kind: CmdCreateReplicationSlot, Slot: "pg_basebackup_1234", Temporary: true, ReserveWAL: true}},
	{`BASE_BACKUP ( LABEL 'pg_basebackup base backup',  PROGRESS,  CHECKPOINT 'fast',  WAIT 0,  MANIFEST 'yes',  TARGET 'client')`,
		Command{Kind: CmdBaseBackup}},
	{"BASE_BACKUP LABEL 'x' PROGRESS FAST WAL NOWAIT MAX_RATE 32", Command{Kind: CmdBaseBackup}},
	{"BASE_BACKUP", Command{Kind: CmdBaseBackup}},

	// Semicolons and white space.
	{"IDENTIFY_SYSTEM;", Command{Kind: CmdIdentifySystem}},
	{" \t\r\n\f\vIDENTIFY_SYSTEM \n; \n", Command{Kind: CmdIdentifySystem}},
	{"TIMELINE_HISTORY 10;", Command{Kind: CmdTimelineHistory, Timeline: 10}},
	{"TIMELINE_HISTORY 4294967295", Command{Kind: CmdTimelineHistory, Timeline: 4294967295}},
	{"TIMELINE_HISTORY 007", Command{Kind: CmdTimelineHistory, Timeline: 7}},

	// Identifiers: bare ones are lower-cased (ASCII only), quoted ones kept.
	{"SHOW Wal_Segment_Size", Command{Kind: CmdShow, Setting: "wal_segment_size"}},
	{`SHOW "Wal"`, Command{Kind: CmdShow, Setting: "Wal"}},
	{"SHOW show", Command{Kind: CmdShow, Setting: "show"}},
	{"SHOW walrelay.compression", Command{Kind: CmdShow, Setting: "walrelay.compression"}},
	{`SHOW "A" . b . "C"`, Command{Kind: CmdShow, Setting: "A.b.C"}},
	{"SHOW a$1_", Command{Kind: CmdShow, Setting: "a$1_"}},
	{"SHOW ÄÖ", Command{Kind: CmdShow, Setting: "ÄÖ"}},
	{`READ_REPLICATION_SLOT MySlot`, Command{Kind: CmdReadReplicationSlot, Slot: "myslot"}},
	{`READ_REPLICATION_SLOT ""`, Command{Kind: CmdReadReplicationSlot}},
	{`DROP_REPLICATION_SLOT "a""b"`, Command{Kind: CmdDropReplicationSlot, Slot: `a"b`}},
	{`CREATE_REPLICATION_SLOT "a""b" PHYSICAL`, Command{Kind: CmdCreateReplicationSlot, Slot: `a"b`}},
	{`CREATE_REPLICATION_SLOT """" PHYSICAL`, Command{Kind: CmdCreateReplicationSlot, Slot: `"`}},
	{`CREATE_REPLICATION_SLOT "a b;c" PHYSICAL`, Command{Kind: CmdCreateReplicationSlot, Slot: "a b;c"}},
	{`DROP_REPLICATION_SLOT wait_`, Command{Kind: CmdDropReplicationSlot, Slot: "wait_"}},
	{`DROP_REPLICATION_SLOT Wait`, Command{Kind: CmdDropReplicationSlot, Slot: "wait"}},
	{"DROP_REPLICATION_SLOT " + strings.Repeat("s", 70), Command{Kind: CmdDropReplicationSlot, Slot: strings.Repeat("s", 63)}},
	{"SHOW " + strings.Repeat("é", 40), Command{Kind: CmdShow, Setting: strings.Repeat("é", 31)}},

	// CREATE_REPLICATION_SLOT options.
	{`CREATE_REPLICATION_SLOT x PHYSICAL`, Command{Kind: CmdCreateReplicationSlot, Slot: "x"}},
	{`CREATE_REPLICATION_SLOT x TEMPORARY PHYSICAL RESERVE_WAL;`, Command{Kind: CmdCreateReplicationSlot, Slot: "x", Temporary: true, ReserveWAL: true}},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL false)`, Command{Kind: CmdCreateReplicationSlot, Slot: "x"}},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL TRUE)`, Command{Kind: CmdCreateReplicationSlot, Slot: "x", ReserveWAL: true}},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (reserve_wal 'On')`, Command{Kind: CmdCreateReplicationSlot, Slot: "x", ReserveWAL: true}},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (reserve_wal off)`, Command{Kind: CmdCreateReplicationSlot, Slot: "x"}},
	{`CREATE_REPLICATION_SLOT x PHYSICAL ("reserve_wal" 1)`, Command{Kind: CmdCreateReplicationSlot, Slot: "x", ReserveWAL: true}},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL 0)`, Command{Kind: CmdCreateReplicationSlot, Slot: "x"}},
	{`CREATE_REPLICATION_SLOT "l" LOGICAL pgoutput (SNAPSHOT 'nothing', TWO_PHASE)`,
		Command{Kind: CmdCreateReplicationSlot, Slot: "l", Logical: true}},
	{`CREATE_REPLICATION_SLOT "l" TEMPORARY LOGICAL test_decoding EXPORT_SNAPSHOT`,
		Command{Kind: CmdCreateReplicationSlot, Slot: "l", Temporary: true, Logical: true}},

	// START_REPLICATION forms.
	{"START_REPLICATION PHYSICAL 16/B374D848", Command{Kind: CmdStartReplication, StartLSN: 0x16B374D848}},
	{"START_REPLICATION 0/0", Command{Kind: CmdStartReplication}},
	{"START_REPLICATION ffffffff/FFFFFFFF", Command{Kind: CmdStartReplication, StartLSN: 0xFFFFFFFFFFFFFFFF}},
	{"START_REPLICATION 000000001/00000000A", Command{Kind: CmdStartReplication, StartLSN: 0x10000000A}},
	{"START_REPLICATION abc/def", Command{Kind: CmdStartReplication, StartLSN: 0xabc00000def}},
	{`START_REPLICATION SLOT s PHYSICAL ff/0 TIMELINE 12`, Command{Kind: CmdStartReplication, Slot: "s", StartLSN: 0xff00000000, Timeline: 12}},
	{`START_REPLICATION SLOT "l" LOGICAL 0/0 ("proto_version" '1', "publication_names" 'p', binary)`,
		Command{Kind: CmdStartReplication, Slot: "l", Logical: true}},
	{`START_REPLICATION SLOT l LOGICAL 1/2`, Command{Kind: CmdStartReplication, Slot: "l", Logical: true, StartLSN: 0x100000002}},
}

func TestCommandParse(t *testing.T) {
	for _, tt := range commandTests {
		got, err := ParseCommand(tt.q)
		if err != nil {
			t.Errorf("ParseCommand(%q): %v", tt.q, err)
			continue
		}
		tt.want.Raw = tt.q
		if got != tt.want {
			t.Errorf("ParseCommand(%q)\n got  %+v\n want %+v", tt.q, got, tt.want)
		}
	}
}

const notReplication = "cannot execute SQL commands in WAL sender for physical replication"

var commandErrorTests = []struct{ q, code, msg string }{
	// Not a replication command: only the first token is looked at.
	{"SELECT 1", "0A000", notReplication},
	{"select pg_is_in_recovery()", "0A000", notReplication},
	{"SELECT * FROM t WHERE a = 'unterminated", "0A000", notReplication},
	{"identify_system", "0A000", notReplication},
	{"Identify_System", "0A000", notReplication},
	{"IDENTIFY_SYSTEMX", "0A000", notReplication},
	{`"IDENTIFY_SYSTEM"`, "0A000", notReplication},
	{"PHYSICAL", "0A000", notReplication},
	{"ALTER_REPLICATION_SLOT s (FAILOVER)", "0A000", notReplication},
	{"UPLOAD_MANIFEST", "0A000", notReplication},
	{"; IDENTIFY_SYSTEM", "0A000", notReplication},
	{"(IDENTIFY_SYSTEM)", "0A000", notReplication},
	{"1", "0A000", notReplication},
	{"'IDENTIFY_SYSTEM'", "0A000", notReplication},

	// Lexical errors.
	{`"IDENTIFY_SYSTEM`, "42601", "unterminated quoted string"},
	{`CREATE_REPLICATION_SLOT "x`, "42601", "unterminated quoted string"},
	{`CREATE_REPLICATION_SLOT "x"" PHYSICAL`, "42601", "unterminated quoted string"},
	{`BASE_BACKUP (LABEL 'x)`, "42601", "unterminated quoted string"},
	{"START_REPLICATION 123456789/0", "42601", "invalid streaming start location"},
	{"START_REPLICATION 0/100000000", "42601", "invalid streaming start location"},
	{"123456789/0", "42601", "invalid streaming start location"},

	// Syntax errors.
	{"IDENTIFY_SYSTEM extra", "42601", `syntax error at or near "extra"`},
	{`IDENTIFY_SYSTEM "Extra"`, "42601", `syntax error at or near ""Extra""`},
	{"IDENTIFY_SYSTEM @", "42601", `syntax error at or near "@"`},
	{"IDENTIFY_SYSTEM;;", "42601", `syntax error at or near ";"`},
	{"IDENTIFY_SYSTEM ; IDENTIFY_SYSTEM", "42601", `syntax error at or near "IDENTIFY_SYSTEM"`},
	{"IDENTIFY_SYSTEM x 'unterminated", "42601", `syntax error at or near "x"`},
	{"TIMELINE_HISTORY", "42601", "syntax error at end of input"},
	{"TIMELINE_HISTORY -1", "42601", `syntax error at or near "-"`},
	{"TIMELINE_HISTORY 1 2", "42601", `syntax error at or near "2"`},
	{"TIMELINE_HISTORY 1A", "42601", `syntax error at or near "A"`},
	{"TIMELINE_HISTORY '1'", "42601", `syntax error at or near "'1'"`},
	{"SHOW", "42601", "syntax error at end of input"},
	{"SHOW WAIT", "42601", `syntax error at or near "WAIT"`},
	{"SHOW a.", "42601", "syntax error at end of input"},
	{"SHOW 'x'", "42601", `syntax error at or near "'x'"`},
	{"READ_REPLICATION_SLOT", "42601", "syntax error at end of input"},
	{"DROP_REPLICATION_SLOT", "42601", "syntax error at end of input"},
	{"DROP_REPLICATION_SLOT x WAIT WAIT", "42601", `syntax error at or near "WAIT"`},
	{"DROP_REPLICATION_SLOT x wait", "42601", `syntax error at or near "wait"`},
	{"START_REPLICATION", "42601", "syntax error at end of input"},
	{"START_REPLICATION SLOT 0/0", "42601", `syntax error at or near "0/0"`},
	{"START_REPLICATION 0/0 TIMELINE", "42601", "syntax error at end of input"},
	{"START_REPLICATION 0/0 TIMELINE x", "42601", `syntax error at or near "x"`},
	{"START_REPLICATION physical 0/0", "42601", `syntax error at or near "physical"`},
	{"START_REPLICATION LOGICAL 0/0", "42601", `syntax error at or near "LOGICAL"`},
	{"START_REPLICATION PHYSICAL PHYSICAL 0/0", "42601", `syntax error at or near "PHYSICAL"`},
	{"START_REPLICATION SLOT s PHYSICAL 0/0 (a 'b')", "42601", `syntax error at or near "("`},
	{"START_REPLICATION SLOT s LOGICAL 0/0 TIMELINE 1", "42601", `syntax error at or near "TIMELINE"`},
	{"START_REPLICATION SLOT s LOGICAL 0/0 ()", "42601", `syntax error at or near ")"`},
	{"START_REPLICATION SLOT s LOGICAL 0/0 (a 1)", "42601", `syntax error at or near "1"`},
	{"START_REPLICATION SLOT s LOGICAL 0/0 (a 'b'", "42601", "syntax error at end of input"},
	{"START_REPLICATION 0/0x", "42601", `syntax error at or near "x"`},
	{`CREATE_REPLICATION_SLOT x`, "42601", "syntax error at end of input"},
	{`CREATE_REPLICATION_SLOT x TEMPORARY`, "42601", "syntax error at end of input"},
	{`CREATE_REPLICATION_SLOT x physical`, "42601", `syntax error at or near "physical"`},
	{`CREATE_REPLICATION_SLOT x LOGICAL`, "42601", "syntax error at end of input"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL ()`, "42601", `syntax error at or near ")"`},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL`, "42601", "syntax error at end of input"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL true false)`, "42601", `syntax error at or near "false"`},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL) RESERVE_WAL`, "42601", `syntax error at or near "RESERVE_WAL"`},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL TIMELINE)`, "42601", `syntax error at or near "TIMELINE"`},
	{`CREATE_REPLICATION_SLOT x PHYSICAL RESERVE_WAL (RESERVE_WAL)`, "42601", `syntax error at or near "("`},

	// Values the grammar accepts and the walsender then refuses.
	{"TIMELINE_HISTORY 0", "42601", "invalid timeline 0"},
	{"TIMELINE_HISTORY 000", "42601", "invalid timeline 0"},
	{"TIMELINE_HISTORY 99999999999", "42601", "invalid timeline 99999999999"},
	{"START_REPLICATION 0/0 TIMELINE 0", "42601", "invalid timeline 0"},
	{`START_REPLICATION SLOT "" 0/0`, "42704", `replication slot "" does not exist`},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (TWO_PHASE)`, "42601", "conflicting or redundant options"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (snapshot 'use')`, "42601", "conflicting or redundant options"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL EXPORT_SNAPSHOT`, "42601", "conflicting or redundant options"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL RESERVE_WAL RESERVE_WAL`, "42601", "conflicting or redundant options"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL, reserve_wal false)`, "42601", "conflicting or redundant options"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL maybe)`, "42601", "reserve_wal requires a Boolean value"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL 2)`, "42601", "reserve_wal requires a Boolean value"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL '1')`, "42601", "reserve_wal requires a Boolean value"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL yes)`, "42601", "reserve_wal requires a Boolean value"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL (FAILOVER)`, "XX000", "unrecognized option: failover"},
	{`CREATE_REPLICATION_SLOT x PHYSICAL ("Reserve_WAL")`, "XX000", "unrecognized option: Reserve_WAL"},
}

// The table holds PostgreSQL 15's answers; majorCommandTests the others'.
func TestCommandParseErrors(t *testing.T) {
	for _, tt := range commandErrorTests {
		_, err := ParseCommandFor(tt.q, 15)
		var pe *PGError
		if !errors.As(err, &pe) {
			t.Errorf("ParseCommand(%q) = %v, want a *PGError", tt.q, err)
			continue
		}
		if pe.Code != tt.code || withDetail(pe) != tt.msg || pe.Severity != "ERROR" {
			t.Errorf("ParseCommand(%q) = %s %s %q, want ERROR %s %q", tt.q, pe.Severity, pe.Code, withDetail(pe), tt.code, tt.msg)
		}
	}
}

// withDetail is the message of a syntax error followed by where it is,
// which the tables give: PostgreSQL says only "syntax error".
func withDetail(pe *PGError) string {
	if pe.Message == "syntax error" {
		return pe.Message + " " + pe.Detail
	}
	return pe.Message
}

// majorCommandTests are the answers that differ between majors, each as that
// major's walsender gives it (e2e's TestProtocolAnswersEqualServers compares
// them with every real server). code "" is a command that parses.
var majorCommandTests = []struct {
	q         string
	major     int
	code, msg string
	kind      CommandKind
	slot      string
}{
	{"ALTER_REPLICATION_SLOT s (FAILOVER)", 16, "0A000", notReplication, 0, ""},
	{"ALTER_REPLICATION_SLOT s (FAILOVER)", 17, "", "", CmdAlterReplicationSlot, "s"},
	{"ALTER_REPLICATION_SLOT s (FAILOVER false, TWO_PHASE)", 18, "", "", CmdAlterReplicationSlot, "s"},
	{"ALTER_REPLICATION_SLOT s (TWO_PHASE)", 17, "XX000", "unrecognized option: two_phase", 0, ""},
	{"ALTER_REPLICATION_SLOT s (FAILOVER, FAILOVER false)", 17, "42601", "conflicting or redundant options", 0, ""},
	{"ALTER_REPLICATION_SLOT s (FAILOVER maybe)", 17, "42601", "failover requires a Boolean value", 0, ""},
	{"ALTER_REPLICATION_SLOT s FAILOVER", 17, "42601", `syntax error at or near "FAILOVER"`, 0, ""},
	{"ALTER_REPLICATION_SLOT s", 17, "42601", "syntax error at end of input", 0, ""},
	{"UPLOAD_MANIFEST", 16, "0A000", notReplication, 0, ""},
	{"UPLOAD_MANIFEST", 17, "", "", CmdUploadManifest, ""},
	{"UPLOAD_MANIFEST x", 17, "42601", `syntax error at or near "x"`, 0, ""},
	{"CREATE_REPLICATION_SLOT x PHYSICAL (FAILOVER)", 16, "XX000", "unrecognized option: failover", 0, ""},
	{"CREATE_REPLICATION_SLOT x PHYSICAL (FAILOVER)", 17, "42601", "conflicting or redundant options", 0, ""},
	{"CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL)", 14, "42601", `syntax error at or near "("`, 0, ""},
	{"CREATE_REPLICATION_SLOT x PHYSICAL RESERVE_WAL", 14, "", "", CmdCreateReplicationSlot, "x"},
	// A keyword of 17 is an identifier before.
	{"DROP_REPLICATION_SLOT UPLOAD_MANIFEST", 16, "", "", CmdDropReplicationSlot, "upload_manifest"},
	{"DROP_REPLICATION_SLOT UPLOAD_MANIFEST", 17, "42601", `syntax error at or near "UPLOAD_MANIFEST"`, 0, ""},
}

func TestCommandPerMajor(t *testing.T) {
	for _, tt := range majorCommandTests {
		cmd, err := ParseCommandFor(tt.q, tt.major)
		if tt.code == "" {
			if err != nil || cmd.Kind != tt.kind || cmd.Slot != tt.slot {
				t.Errorf("PostgreSQL %d: ParseCommand(%q) = %+v, %v; want kind %d slot %q", tt.major, tt.q, cmd, err, tt.kind, tt.slot)
			}
			continue
		}
		var pe *PGError
		if !errors.As(err, &pe) || pe.Code != tt.code || withDetail(pe) != tt.msg {
			t.Errorf("PostgreSQL %d: ParseCommand(%q) = %v, want ERROR %s %q", tt.major, tt.q, err, tt.code, tt.msg)
		}
	}
}

func TestCommandEmptyQuery(t *testing.T) {
	for _, q := range []string{"", "  ", ";", " ;; ", "\t\n;\r\f\v"} {
		if _, err := ParseCommand(q); !errors.Is(err, ErrEmptyQuery) {
			t.Errorf("ParseCommand(%q) = %v, want ErrEmptyQuery", q, err)
		}
	}
}

func TestCommandPGErrorResponse(t *testing.T) {
	e := errorf("58P01", "requested WAL segment %s has already been removed", walstream.SegmentFileName(1, 1, 16<<20))
	e.Detail, e.Hint = "d", "h"
	r := e.Response()
	if r.Severity != "ERROR" || r.SeverityUnlocalized != "ERROR" || r.Code != "58P01" || r.Detail != "d" || r.Hint != "h" ||
		r.Message != "requested WAL segment 000000010000000000000001 has already been removed" {
		t.Errorf("Response = %+v", r)
	}
	if got, want := e.Error(), "ERROR: requested WAL segment 000000010000000000000001 has already been removed (SQLSTATE 58P01)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if f := fatalf("28P01", "x %d", 1); f.Severity != "FATAL" || f.Response().Severity != "FATAL" || f.Message != "x 1" {
		t.Errorf("fatalf = %+v", f)
	}
}

package relay

import (
	"errors"
	"testing"

	"github.com/walrelay/walrelay/walstream"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		q    string
		want Command
	}{
		{"IDENTIFY_SYSTEM", Command{Kind: CmdIdentifySystem}},
		{"IDENTIFY_SYSTEM;", Command{Kind: CmdIdentifySystem}},
		{"  IDENTIFY_SYSTEM ; ", Command{Kind: CmdIdentifySystem}},
		{"TIMELINE_HISTORY 2", Command{Kind: CmdTimelineHistory, Timeline: 2}},
		{"SHOW wal_segment_size", Command{Kind: CmdShow, Setting: "wal_segment_size"}},
		{"SHOW data_directory_mode", Command{Kind: CmdShow, Setting: "data_directory_mode"}},
		{"SHOW Wal_Segment_Size", Command{Kind: CmdShow, Setting: "wal_segment_size"}},
		{`SHOW "Wal"`, Command{Kind: CmdShow, Setting: "Wal"}},
		{"SHOW walrelay.compression", Command{Kind: CmdShow, Setting: "walrelay.compression"}},
		{`READ_REPLICATION_SLOT "s"`, Command{Kind: CmdReadReplicationSlot, Slot: "s"}},
		{`READ_REPLICATION_SLOT MySlot`, Command{Kind: CmdReadReplicationSlot, Slot: "myslot"}},
		{`CREATE_REPLICATION_SLOT "pg_basebackup_1234" TEMPORARY PHYSICAL ( RESERVE_WAL)`,
			Command{Kind: CmdCreateReplicationSlot, Slot: "pg_basebackup_1234", Temporary: true, ReserveWAL: true}},
		{`CREATE_REPLICATION_SLOT "x" PHYSICAL RESERVE_WAL`, Command{Kind: CmdCreateReplicationSlot, Slot: "x", ReserveWAL: true}},
		{`CREATE_REPLICATION_SLOT x PHYSICAL`, Command{Kind: CmdCreateReplicationSlot, Slot: "x"}},
		{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL false)`, Command{Kind: CmdCreateReplicationSlot, Slot: "x"}},
		{`CREATE_REPLICATION_SLOT x PHYSICAL (reserve_wal 'on')`, Command{Kind: CmdCreateReplicationSlot, Slot: "x", ReserveWAL: true}},
		{`CREATE_REPLICATION_SLOT "l" LOGICAL pgoutput (SNAPSHOT 'nothing')`, Command{Kind: CmdCreateReplicationSlot, Slot: "l", Logical: true}},
		{`CREATE_REPLICATION_SLOT "l" TEMPORARY LOGICAL test_decoding EXPORT_SNAPSHOT`, Command{Kind: CmdCreateReplicationSlot, Slot: "l", Temporary: true, Logical: true}},
		{`DROP_REPLICATION_SLOT "x" WAIT`, Command{Kind: CmdDropReplicationSlot, Slot: "x", Wait: true}},
		{`DROP_REPLICATION_SLOT x`, Command{Kind: CmdDropReplicationSlot, Slot: "x"}},
		{"START_REPLICATION 0/3000000 TIMELINE 1", Command{Kind: CmdStartReplication, StartLSN: 0x3000000, Timeline: 1}},
		{"START_REPLICATION PHYSICAL 16/B374D848", Command{Kind: CmdStartReplication, StartLSN: 0x16B374D848}},
		{`START_REPLICATION SLOT "pg_receivewal_slot" 0/1000000 TIMELINE 1`,
			Command{Kind: CmdStartReplication, Slot: "pg_receivewal_slot", StartLSN: 0x1000000, Timeline: 1}},
		{`START_REPLICATION SLOT s PHYSICAL ff/0 TIMELINE 12`, Command{Kind: CmdStartReplication, Slot: "s", StartLSN: 0xff00000000, Timeline: 12}},
		{`START_REPLICATION SLOT "l" LOGICAL 0/0 ("proto_version" '1', "publication_names" 'p')`,
			Command{Kind: CmdStartReplication, Slot: "l", Logical: true}},
		{`CREATE_REPLICATION_SLOT "a""b" PHYSICAL`, Command{Kind: CmdCreateReplicationSlot, Slot: `a"b`}},
		{"BASE_BACKUP (LABEL 'x', PROGRESS, WAL)", Command{Kind: CmdBaseBackup}},
		{"BASE_BACKUP LABEL 'x' FAST", Command{Kind: CmdBaseBackup}},
	}
	for _, tt := range tests {
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

func TestParseCommandErrors(t *testing.T) {
	tests := []struct{ q, code, msg string }{
		{"SELECT 1", "0A000", "cannot execute SQL commands in WAL sender for physical replication"},
		{"identify_system", "0A000", "cannot execute SQL commands in WAL sender for physical replication"},
		{"Identify_System", "0A000", "cannot execute SQL commands in WAL sender for physical replication"},
		{"PHYSICAL", "0A000", "cannot execute SQL commands in WAL sender for physical replication"},
		{"IDENTIFY_SYSTEM extra", "42601", `syntax error at or near "extra"`},
		{"TIMELINE_HISTORY", "42601", "syntax error at end of input"},
		{"TIMELINE_HISTORY 0", "42601", "invalid timeline 0"},
		{"START_REPLICATION 0/0 TIMELINE 0", "42601", "invalid timeline 0"},
		{"TIMELINE_HISTORY 99999999999", "42601", "invalid timeline 99999999999"},
		{"START_REPLICATION", "42601", "syntax error at end of input"},
		{"START_REPLICATION 123456789/0", "42601", "invalid streaming start location"},
		{"START_REPLICATION SLOT 0/0", "42601", `syntax error at or near "0/0"`},
		{`CREATE_REPLICATION_SLOT "x`, "42601", "unterminated quoted identifier"},
		{`CREATE_REPLICATION_SLOT "" PHYSICAL`, "42601", "zero-length delimited identifier"},
		{`BASE_BACKUP (LABEL 'x)`, "42601", "unterminated quoted string"},
		{`CREATE_REPLICATION_SLOT x PHYSICAL (TWO_PHASE)`, "42601", "unrecognized option: two_phase"},
		{`CREATE_REPLICATION_SLOT x PHYSICAL (RESERVE_WAL maybe)`, "22023", "reserve_wal requires a Boolean value"},
		{`CREATE_REPLICATION_SLOT x`, "42601", "syntax error at end of input"},
		{"SHOW", "42601", "syntax error at end of input"},
		{"IDENTIFY_SYSTEM ; IDENTIFY_SYSTEM", "42601", `syntax error at or near "IDENTIFY_SYSTEM"`},
		{"IDENTIFY_SYSTEM @", "42601", `syntax error at or near "@"`},
	}
	for _, tt := range tests {
		_, err := ParseCommand(tt.q)
		var pe *PGError
		if !errors.As(err, &pe) {
			t.Errorf("ParseCommand(%q) = %v, want PGError", tt.q, err)
			continue
		}
		if pe.Code != tt.code || pe.Message != tt.msg || pe.Severity != "ERROR" {
			t.Errorf("ParseCommand(%q) = %s %s %q, want %s %q", tt.q, pe.Severity, pe.Code, pe.Message, tt.code, tt.msg)
		}
	}
	for _, q := range []string{"", "  ", ";", " ;; "} {
		if _, err := ParseCommand(q); !errors.Is(err, ErrEmptyQuery) {
			t.Errorf("ParseCommand(%q) = %v, want ErrEmptyQuery", q, err)
		}
	}
}

func TestPGErrorResponse(t *testing.T) {
	e := errorf("58P01", "requested WAL segment %s has already been removed", walstream.SegmentFileName(1, 1, 16<<20))
	r := e.Response()
	if r.Severity != "ERROR" || r.SeverityUnlocalized != "ERROR" || r.Code != "58P01" ||
		r.Message != "requested WAL segment 000000010000000000000001 has already been removed" {
		t.Errorf("Response = %+v", r)
	}
	if f := fatalf("28P01", "x"); f.Severity != "FATAL" {
		t.Errorf("fatalf severity %s", f.Severity)
	}
}

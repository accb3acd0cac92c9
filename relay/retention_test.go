package relay

import (
	"testing"
	"time"

	"github.com/walrelay/walrelay/walstream"
)

func TestPlanRetention(t *testing.T) {
	const seg = 16 << 20
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	segs := make([]walstream.SegmentInfo, 10) // segments 0..9, one an hour, newest now
	for i := range segs {
		segs[i] = walstream.SegmentInfo{Timeline: 1, Start: walstream.LSN(i * seg), Complete: i < 9, Bytes: seg,
			ModTime: now.Add(-time.Duration(9-i) * time.Hour)}
	}
	end := walstream.LSN(9*seg + 100)
	slot := func(name string, lsn walstream.LSN) SlotStatus { return SlotStatus{Name: name, RestartLSN: lsn} }
	tests := []struct {
		name       string
		p          RetentionPolicy
		slots      []SlotStatus
		needed     walstream.LSN
		haveNeeded bool
		keep       walstream.LSN
		invalidate []string
	}{
		{name: "size", p: RetentionPolicy{RetainSize: 3 * seg}, keep: end - 3*seg},
		{name: "age keeps more", p: RetentionPolicy{RetainAge: 4*time.Hour + time.Minute}, keep: 5 * seg},
		{name: "slot pins", p: RetentionPolicy{RetainSize: seg}, slots: []SlotStatus{slot("s", 2*seg)}, needed: 2 * seg, haveNeeded: true, keep: 2 * seg},
		{name: "cap invalidates the slot", p: RetentionPolicy{RetainSize: seg, MaxRetainedSize: 4 * seg},
			slots: []SlotStatus{slot("old", 2*seg), slot("recent", 8*seg)}, needed: 2 * seg, haveNeeded: true,
			keep: end - 4*seg, invalidate: []string{"old"}},
		{name: "cap not reached", p: RetentionPolicy{RetainSize: seg, MaxRetainedSize: 8 * seg},
			slots: []SlotStatus{slot("s", 2*seg)}, needed: 2 * seg, haveNeeded: true, keep: 2 * seg},
		{name: "small store", p: RetentionPolicy{RetainSize: 100 * seg}, keep: 0},
	}
	for _, tt := range tests {
		got := planRetention(tt.p, segs, end, tt.slots, tt.needed, tt.haveNeeded, now)
		if got.keepFrom != tt.keep || len(got.invalidate) != len(tt.invalidate) || (len(tt.invalidate) > 0 && got.invalidate[0] != tt.invalidate[0]) {
			t.Errorf("%s: keep %s invalidate %v, want %s %v", tt.name, got.keepFrom, got.invalidate, tt.keep, tt.invalidate)
		}
	}
}

func TestParseRetain(t *testing.T) {
	if size, age, err := ParseRetain("2GB"); err != nil || size != 2<<30 || age != 0 {
		t.Errorf("2GB: %d %v %v", size, age, err)
	}
	if size, age, err := ParseRetain("36h"); err != nil || size != 0 || age != 36*time.Hour {
		t.Errorf("36h: %d %v %v", size, age, err)
	}
	if size, _, err := ParseRetain("0"); err != nil || size != 0 {
		t.Errorf("0: %d %v", size, err)
	}
	for _, bad := range []string{"", "lots", "1.5GB", "-1GB"} {
		if _, _, err := ParseRetain(bad); err == nil {
			t.Errorf("ParseRetain(%q) accepted", bad)
		}
	}
}

// An invalidated slot cannot be streamed from and no longer pins WAL.
func TestInvalidatedSlot(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, 1000)
	conn := f.connect(t, "")
	if _, err := conn.Exec(t.Context(), `CREATE_REPLICATION_SLOT s PHYSICAL RESERVE_WAL`).ReadAll(); err != nil {
		t.Fatal(err)
	}
	f.srv.slots.invalidate("s")
	if _, ok := f.srv.slots.oldest(); ok {
		t.Error("invalidated slot still pins WAL")
	}
	_, err := conn.Exec(t.Context(), `START_REPLICATION SLOT s 0/300000 TIMELINE 1`).ReadAll()
	assertPgError(t, err, "55000", `can no longer get changes from replication slot "s"`)
}

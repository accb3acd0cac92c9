package topology

import (
	"reflect"
	"testing"
	"time"

	"github.com/walrelay/walrelay/walstream"
)

func TestLagBehind(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	samples := []lsnSample{{t0, 100}, {t0.Add(time.Second), 100}, {t0.Add(2 * time.Second), 300}, {t0.Add(3 * time.Second), 700}}
	now := t0.Add(4 * time.Second)
	tests := []struct {
		pos   walstream.LSN
		bytes uint64
		secs  float64
	}{
		{700, 0, 0}, // caught up
		{800, 0, 0}, // ahead of the last sample (read later than the primary)
		{300, 400, 1},
		{150, 550, 2},
		{50, 650, 4}, // behind the whole history: at least its length
	}
	for _, tt := range tests {
		b, s := lagBehind(samples, tt.pos, now)
		if b != tt.bytes || s != tt.secs {
			t.Errorf("lagBehind(%d) = %d B, %.1fs; want %d B, %.1fs", tt.pos, b, s, tt.bytes, tt.secs)
		}
	}
	// An idle primary: a standby at its position is not lagging, however
	// long ago the position was written.
	idle := []lsnSample{{t0, 500}, {t0.Add(time.Minute), 500}}
	if b, s := lagBehind(idle, 500, t0.Add(time.Hour)); b != 0 || s != 0 {
		t.Errorf("idle primary: %d B, %.1fs", b, s)
	}
}

func TestSlotWants(t *testing.T) {
	tree := &Tree{Primary: "pg", Nodes: map[string]*Node{
		"pg": {Name: "pg", Kind: KindPrimary},
		"r1": {Name: "r1", Kind: KindRelay},
		"s1": {Name: "s1", Kind: KindStandby},
		"s2": {Name: "s2", Kind: KindStandby},
		"s3": {Name: "s3", Kind: KindStandby},
		"s4": {Name: "s4", Kind: KindStandby},
	}}
	seg := uint64(16 << 20)
	results := map[string]sqlObs{
		// Holds from the segment it replays: that is where its WAL
		// receiver restarts.
		"s1": {st: sqlStatus{InRecovery: true, PrimarySlot: "s1_slot", ReceiveLSN: 0x5000100, ReplayLSN: 0x4FFFF00, SegmentSize: seg}},
		// Received less than it replayed (restored from an archive): the
		// older of the two.
		"s2": {st: sqlStatus{InRecovery: true, PrimarySlot: "s2_slot", ReceiveLSN: 0x2000010, ReplayLSN: 0x3000000, SegmentSize: seg}},
		"s3": {st: sqlStatus{InRecovery: true, ReplayLSN: 0x3000000, SegmentSize: seg}},   // no slot
		"s4": {err: errTest, st: sqlStatus{PrimarySlot: "s4_slot", ReplayLSN: 0x3000000}}, // unreachable
		"pg": {st: sqlStatus{CurrentLSN: 0x6000000, PrimarySlot: "", SegmentSize: seg}},
	}
	got := slotWants(tree, results)
	want := []SlotWant{{Name: "s1_slot", RestartLSN: 0x4000000, Standby: "s1"}, {Name: "s2_slot", RestartLSN: 0x2000000, Standby: "s2"}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("slotWants:\n got %+v\nwant %+v", got, want)
	}
}

type testErr string

func (e testErr) Error() string { return string(e) }

var errTest = testErr("unreachable")

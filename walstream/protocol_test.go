package walstream

import (
	"testing"
	"time"
)

func TestProtocolMessagesRoundTrip(t *testing.T) {
	now := PGTime(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC))
	k := Keepalive{WALEnd: 0x3000100, SendTime: now, ReplyRequested: true}
	kb := AppendKeepalive(nil, k)
	if len(kb) != 18 || kb[0] != 'k' {
		t.Fatalf("keepalive %d bytes", len(kb))
	}
	if got, err := ParseKeepalive(kb); err != nil || got != k {
		t.Errorf("keepalive round trip: %+v %v", got, err)
	}
	if _, err := ParseKeepalive(append(kb, 0)); err == nil {
		t.Error("19-byte keepalive accepted")
	}
	r := StandbyStatus{Write: 1, Flush: 2, Apply: 3, SendTime: now, ReplyRequested: true}
	rb := AppendStandbyStatus(nil, r)
	if got, err := ParseStandbyStatus(rb); err != nil || got != r || len(rb) != 34 {
		t.Errorf("status round trip: %+v %v (%d bytes)", got, err, len(rb))
	}
	h := HotStandbyFeedback{SendTime: now, Xmin: 700, XminEpoch: 1, CatalogXmin: 650}
	hb := AppendHotStandbyFeedback(nil, h)
	if got, err := ParseHotStandbyFeedback(hb); err != nil || got != h || len(hb) != 25 {
		t.Errorf("feedback round trip: %+v %v", got, err)
	}
	w := append(AppendXLogDataHeader(nil, 0x3000000, 0x3000010, now), "walbytes"...)
	x, err := ParseXLogData(w)
	if err != nil || x.DataStart != 0x3000000 || x.WALEnd != 0x3000010 || x.SendTime != now || string(x.Data) != "walbytes" {
		t.Errorf("XLogData: %+v %v", x, err)
	}
	for _, bad := range [][]byte{nil, {'w'}, w[:24], {'r', 0}, {'h'}} {
		if _, err := ParseXLogData(bad); err == nil && len(bad) < 25 {
			t.Errorf("short XLogData %v accepted", bad)
		}
		if _, err := ParseStandbyStatus(bad); err == nil {
			t.Errorf("short status %v accepted", bad)
		}
		if _, err := ParseHotStandbyFeedback(bad); err == nil {
			t.Errorf("short feedback %v accepted", bad)
		}
	}
	if got := FromPGTime(PGTime(time.Unix(1700000000, 123000))); !got.Equal(time.Unix(1700000000, 123000)) {
		t.Errorf("PGTime round trip: %v", got)
	}
	if PGTime(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)) != 0 {
		t.Error("PostgreSQL epoch is not 0")
	}
}

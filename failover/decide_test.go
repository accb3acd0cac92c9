package failover

import (
	"errors"
	"testing"
	"time"

	"github.com/walrelay/walrelay/topology"
	"github.com/walrelay/walrelay/walstream"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

// testTree: pg <- r1, r2, r3 (first tier), r4 below r1; standbys below.
func testTree() *topology.Tree {
	n := func(name string, kind topology.Kind, parent string) *topology.Node {
		return &topology.Node{Name: name, Kind: kind, Parent: parent, State: topology.StateAlive}
	}
	tr := &topology.Tree{Primary: "pg", Timeline: 1, Nodes: map[string]*topology.Node{
		"pg": n("pg", topology.KindPrimary, ""),
		"r1": n("r1", topology.KindRelay, "pg"), "r2": n("r2", topology.KindRelay, "pg"), "r3": n("r3", topology.KindRelay, "pg"),
		"r4": n("r4", topology.KindRelay, "r1"),
		"c1": n("c1", topology.KindStandby, "r1"), "c2": n("c2", topology.KindStandby, "r2"), "s1": n("s1", topology.KindStandby, "r4"),
	}}
	tr.Nodes["c1"].Promotable, tr.Nodes["c2"].Promotable = true, true
	return tr
}

func reports(streaming map[string]bool, age time.Duration) map[string]topology.RelayObservation {
	out := map[string]topology.RelayObservation{}
	for name, s := range streaming {
		out[name] = topology.RelayObservation{At: t0.Add(-age), Report: topology.RelayReport{Timeline: 1, Streaming: s}}
	}
	return out
}

func TestDetect(t *testing.T) {
	timeout := 3 * time.Second
	tests := []struct {
		name     string
		seen     time.Duration // since the managers last read the primary
		reports  map[string]topology.RelayObservation
		mutate   func(*topology.Tree)
		wantDown bool
	}{
		{"primary answers", time.Second, reports(map[string]bool{"r1": false, "r2": false, "r3": false}, 0), nil, false},
		{"managers cut off, relays still stream", 10 * time.Second, reports(map[string]bool{"r1": true, "r2": true, "r3": false}, 0), nil, false},
		{"one broken link is not a failover", 10 * time.Second, reports(map[string]bool{"r1": false, "r2": true, "r3": true}, 0), nil, false},
		{"a majority lost it", 10 * time.Second, reports(map[string]bool{"r1": false, "r2": false, "r3": true}, 0), nil, true},
		{"all lost it", 10 * time.Second, reports(map[string]bool{"r1": false, "r2": false, "r3": false}, 0), nil, true},
		{"silent relays have no vote", 10 * time.Second, func() map[string]topology.RelayObservation {
			r := reports(map[string]bool{"r1": false}, 0)
			for k, v := range reports(map[string]bool{"r2": true, "r3": true}, time.Minute) {
				r[k] = v
			}
			return r
		}(), nil, true},
		{"a deeper relay's view does not count", 10 * time.Second, reports(map[string]bool{"r1": true, "r2": true, "r3": true, "r4": false}, 0), nil, false},
		{"no first-tier relay: managers decide", 10 * time.Second, nil, func(tr *topology.Tree) {
			for _, r := range []string{"r1", "r2", "r3"} {
				tr.Nodes[r].Parent = "r4"
			}
			tr.Nodes["r4"].Parent = "pg"
			tr.Nodes["r4"].State = topology.StateFailed
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := testTree()
			if tt.mutate != nil {
				tt.mutate(tr)
			}
			down, why := detect(tr, t0, t0.Add(-tt.seen), tt.reports, timeout)
			if down != tt.wantDown {
				t.Errorf("detect = %v (%s), want %v", down, why, tt.wantDown)
			}
		})
	}
}

func TestCandidatesAndFurthest(t *testing.T) {
	tr := testTree()
	tr.Nodes["s2"] = &topology.Node{Name: "s2", Kind: topology.KindStandby, Promotable: true, State: topology.StateAlive, Parent: "r2"}
	obs := map[string]topology.Observation{
		"c1": {At: t0, InRecovery: true, Timeline: 1, ReceiveLSN: 0x5000000, ReplayLSN: 0x4000000},
		"c2": {At: t0, InRecovery: true, Timeline: 1, ReceiveLSN: 0x5800000, ReplayLSN: 0x5800000},
		"s1": {At: t0, InRecovery: true, Timeline: 1, ReceiveLSN: 0x6000000},                   // not promotable
		"s2": {At: t0.Add(-time.Minute), InRecovery: true, Timeline: 1, ReceiveLSN: 0x9000000}, // stale reading
	}
	observed := func(name string) (topology.Observation, bool) { o, ok := obs[name]; return o, ok }
	cands := candidates(tr, t0, observed)
	if len(cands) != 2 || cands[0].name != "c2" || cands[1].name != "c1" {
		t.Fatalf("candidates = %+v, want c2 then c1", cands)
	}
	rep := map[string]topology.RelayObservation{
		"r1": {At: t0, Report: topology.RelayReport{Timeline: 1, ReceiveLSN: 0x7000000}},
		"r2": {At: t0, Report: topology.RelayReport{Timeline: 1, ReceiveLSN: 0x5800000}},
		"r3": {At: t0.Add(-time.Minute), Report: topology.RelayReport{Timeline: 1, ReceiveLSN: 0x8000000}}, // stale
	}
	// A stale reading of a standby still counts: positions only grow, so
	// it is a lower bound of what the standby holds. No relay holds it.
	got, holder := furthest(tr, t0, rep, observed)
	if got != walstream.LSN(0x9000000) || holder != "" {
		t.Errorf("furthest = %s held by %q, want 0/9000000 held by a standby", got, holder)
	}
	delete(obs, "s2")
	got, holder = furthest(tr, t0, rep, observed)
	if got != walstream.LSN(0x7000000) || holder != "r1" {
		t.Errorf("furthest = %s held by %q, want 0/7000000 held by r1", got, holder)
	}
	// A candidate on another timeline (promoted elsewhere, or behind a
	// switch) is not a candidate.
	obs["c2"] = topology.Observation{At: t0, InRecovery: true, Timeline: 2, ReceiveLSN: 0x9000000}
	if cands := candidates(tr, t0, observed); len(cands) != 1 || cands[0].name != "c1" {
		t.Errorf("candidates with c2 on timeline 2 = %+v", cands)
	}
}

func TestParseMode(t *testing.T) {
	for _, ok := range []string{"auto", "external", "off"} {
		if _, err := ParseMode(ok); err != nil {
			t.Errorf("ParseMode(%q): %v", ok, err)
		}
	}
	if _, err := ParseMode("manual"); err == nil {
		t.Error("ParseMode(manual): no error")
	}
}

func TestSyncNames(t *testing.T) {
	tests := map[string][]string{
		"":                     nil,
		"s1":                   {"s1"},
		"s1, S2":               {"s1", "s2"},
		"FIRST 2 (r1, r2, c1)": {"r1", "r2", "c1"},
		`ANY 1 ("Node A", b)`:  {"Node A", "b"},
		"*":                    nil,
		`2 (a,"b""c")`:         {"a", `b"c`},
	}
	for in, want := range tests {
		got := syncNames(in)
		if len(got) != len(want) {
			t.Errorf("syncNames(%q) = %v, want %v", in, got, want)
			continue
		}
		for _, w := range want {
			if !got[w] {
				t.Errorf("syncNames(%q) = %v, missing %q", in, got, w)
			}
		}
	}
	// A registered standby named there is a candidate without --promotable.
	tr := testTree()
	tr.Nodes["c2"].Promotable = false
	obs := map[string]topology.Observation{
		"pg": {At: t0, Err: errDown, SyncStandbyNames: "FIRST 1 (c2)"},
		"c1": {At: t0, InRecovery: true, Timeline: 1, ReceiveLSN: 0x100},
		"c2": {At: t0, InRecovery: true, Timeline: 1, ReceiveLSN: 0x200},
	}
	cands := candidates(tr, t0, func(n string) (topology.Observation, bool) { o, ok := obs[n]; return o, ok })
	if len(cands) != 2 || cands[0].name != "c2" {
		t.Errorf("candidates = %+v, want the synchronous standby c2 first", cands)
	}
}

var errDown = errors.New("connection refused")

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/topology"
	"github.com/walrelay/walrelay/walstream"
)

func knownTree() *topology.TreeResponse {
	u := func(v uint64) *uint64 { return &v }
	f := func(v float64) *float64 { return &v }
	return &topology.TreeResponse{Member: "m2", Leader: "m1", CommitIndex: 42, Tree: &topology.Tree{
		Epoch: 9, Primary: "pg1", Timeline: 2,
		Nodes: map[string]*topology.Node{
			"pg1": {Name: "pg1", Kind: topology.KindPrimary, State: topology.StateAlive, Conninfo: "host=10.0.0.1 port=5432 user=postgres password=secret"},
			"r1":  {Name: "r1", Kind: topology.KindRelay, Zone: "a", State: topology.StateAlive, Parent: "pg1", Conninfo: "host=10.0.1.1 port=6001"},
			"r2":  {Name: "r2", Kind: topology.KindRelay, Zone: "b", State: topology.StateFailed, Parent: "pg1", Conninfo: "host=10.0.1.2 port=6001"},
			"s1":  {Name: "s1", Kind: topology.KindStandby, Zone: "a", Tier: topology.TierHigh, State: topology.StateAlive, Parent: "r1", Conninfo: "host=10.0.2.1"},
			"s2":  {Name: "s2", Kind: topology.KindStandby, Zone: "a", Tier: topology.TierDefault, State: topology.StateAlive, Parent: "r1", Conninfo: "host=10.0.2.2"},
			"s3":  {Name: "s3", Kind: topology.KindStandby, Tier: topology.TierBatch, State: topology.StateAlive},
		},
	}, Status: &topology.StatusResponse{Leader: "m1", PrimaryLSN: 0x3000100, Nodes: map[string]topology.NodeStatus{
		"pg1": {Timeline: 2, ReceiveLSN: 0x3000100, ReplayLSN: 0x3000100, LagBytes: u(0), LagSeconds: f(0)},
		"r1": {Timeline: 2, ReceiveLSN: 0x3000100, LagBytes: u(0), LagSeconds: f(0), Streaming: true,
			Compression: "zstd", CompressionRatio: 10.87},
		"s1": {Timeline: 2, InRecovery: true, ReceiveLSN: 0x3000100, ReplayLSN: 0x3000000, LagBytes: u(256), LagSeconds: f(0.4), Streaming: true, Upstream: "10.0.1.1:6001"},
		"s2": {Timeline: 2, InRecovery: true, ReceiveLSN: 0x2000000, ReplayLSN: 0x2000000, LagBytes: u(0x1000100), LagSeconds: f(12.3), Upstream: "10.0.1.1:6001"},
		"s3": {Error: "connection refused"},
	}}}
}

func TestPrintTopology(t *testing.T) {
	var b strings.Builder
	printTopology(&b, knownTree())
	want := `epoch 9, timeline 2, primary at 0/3000100, leader m1, served by m2 at commit index 42

NODE      ROLE     HOST           ZONE/TIER  STATE                 TL  RECEIVE    REPLAY     LAG      LAG TIME  LINK
pg1       primary  10.0.0.1:5432  -          alive                 2   0/3000100  0/3000100  0 B      0.0s      -
├─ r1     relay    10.0.1.1:6001  a          alive                 2   0/3000100  -          0 B      0.0s      zstd 10.9x
│  ├─ s1  standby  10.0.2.1:5432  a/high     alive                 2   0/3000100  0/3000000  256 B    0.4s      -
│  └─ s2  standby  10.0.2.2:5432  a/default  alive, not streaming  2   0/2000000  0/2000000  16.0 MB  12.3s     -
└─ r2     relay    10.0.1.2:6001  b          failed                -   -          -          -        -         -
s3        standby  -              /batch     alive, unreachable    -   -          -          -        -         -
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestTreeCommand runs `walrelay tree` and `walrelay status` against a
// manager API serving a known tree: text and JSON, and the exit codes
// scripts rely on.
func TestTreeCommand(t *testing.T) {
	known := knownTree()
	leaderless := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/tree" {
			http.NotFound(w, r)
			return
		}
		tr := *known
		if leaderless {
			tr.Leader = ""
		}
		json.NewEncoder(w).Encode(tr)
	}))
	defer srv.Close()
	run := func(args ...string) (string, error) {
		cmd := newRootCmd()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(append(args, "--manager", "http://127.0.0.1:1,"+srv.URL)) // the first one is down
		err := cmd.Execute()
		return out.String(), err
	}

	out, err := run("tree", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var got topology.TreeResponse
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("tree -o json is not JSON: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(&got, known) {
		t.Errorf("tree -o json:\n got %+v\nwant %+v", got, known)
	}
	if got.Status.Nodes["s2"].ReplayLSN != walstream.LSN(0x2000000) || !strings.Contains(out, `"replay_lsn": "0/2000000"`) {
		t.Errorf("LSNs are not written the way PostgreSQL writes them:\n%s", out)
	}

	out, err = run("status", "s1")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"assigned parent:  r1", "replay lsn:       0/3000000", "lag:              256 B, 0.4s behind the primary (at 0/3000100)", "streams from:     10.0.1.1:6001, streaming"} {
		if !strings.Contains(out, want) {
			t.Errorf("status s1: missing %q in\n%s", want, out)
		}
	}
	out, err = run("status", "pg1", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "secret") || !strings.Contains(out, "password='****'") {
		t.Errorf("status -o json shows the password:\n%s", out)
	}
	if _, err := run("status", "nope"); err == nil || !strings.Contains(err.Error(), `no node "nope"`) {
		t.Errorf("status of an unknown node: %v", err)
	}

	// --watch redraws until interrupted.
	wctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	wcmd := newRootCmd()
	var wout bytes.Buffer
	wcmd.SetOut(&wout)
	wcmd.SetArgs([]string{"tree", "--watch", "--interval", "100ms", "--manager", srv.URL})
	if err := wcmd.ExecuteContext(wctx); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(wout.String(), "epoch 9, timeline 2"); n < 2 {
		t.Errorf("tree --watch drew the tree %d times in 500ms at a 100ms interval:\n%s", n, wout.String())
	}

	leaderless = true
	if _, err := run("tree"); err == nil || !strings.Contains(err.Error(), "no leader") {
		t.Errorf("tree without a leader: want an error, got %v", err)
	}
	cmd := newRootCmd()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetArgs([]string{"tree", "--manager", "http://127.0.0.1:1"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "no manager reachable") {
		t.Errorf("tree with no manager reachable: %v", err)
	}
}

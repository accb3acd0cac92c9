package topology

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/walrelay/walrelay/internal/feed"
	"github.com/walrelay/walrelay/walstream"
)

// Positions a relay reports for its children reach the leader through a
// follower, and the feed on the follower (forwarded, query string and all)
// lists the managed standby with its registered endpoint; its health check
// answers 200, 503 and 404; the heartbeat answer gives the relay its
// children's endpoints.
func TestReplicaFeedFromRelayReports(t *testing.T) {
	m1 := startManager(t, "m1", true, nil)
	m2 := startManager(t, "m2", false, []string{m1.url})
	ctx := context.Background()
	c := &Client{URLs: []string{m1.url}}
	eventually(t, "two members", func() bool {
		tr, err := c.Tree(ctx)
		return err == nil && len(tr.Tree.Managers) == 2 && tr.Leader == "m1"
	})
	for _, cmd := range []Command{
		{Op: OpSetPrimary, Name: "pg1", Conninfo: "host=127.0.0.1 port=1", Timeline: 1},
		{Op: OpRegisterRelay, Name: "r1", Zone: "a"},
		{Op: OpAddStandby, Name: "s1", Conninfo: "host=127.0.0.1 port=2 user=app", Zone: "a", Tier: TierHigh},
		{Op: OpAssign, Assignments: map[string]string{"r1": "pg1", "s1": "r1"}},
	} {
		if _, err := c.Apply(ctx, cmd); err != nil {
			t.Fatalf("%+v: %v", cmd, err)
		}
	}
	follower := &Client{URLs: []string{m2.url}}
	rep := &RelayReport{Timeline: 1, ReceiveLSN: 0x3000000, Streaming: true,
		Children: []ChildReport{{Name: "s1", WriteLSN: 0x3000000, FlushLSN: 0x3000000, ReplayLSN: 0x2FFF000, Timeline: 1}, {Name: "unmanaged", ReplayLSN: 0x3000000}}}
	hb, err := follower.Heartbeat(ctx, "r1", rep)
	if err != nil {
		t.Fatal(err)
	}
	if ep, ok := hb.Endpoints["s1"]; !ok || ep.Host != "127.0.0.1" || ep.Port != 2 || ep.Tier != "high" || len(hb.Endpoints) != 1 {
		t.Fatalf("heartbeat endpoints: %+v", hb.Endpoints)
	}
	resp, err := follower.Replicas(ctx, feed.Query{MaxAge: feed.DefaultMaxAge, MinLSN: 0x2FFF000, Tier: "high"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Replicas) != 1 {
		t.Fatalf("feed through the follower: %+v", resp)
	}
	r := resp.Replicas[0]
	if r.Name != "s1" || r.Host != "127.0.0.1" || r.Port != 2 || r.Parent != "r1" || r.Source != "relay" ||
		r.ReplayLSN != walstream.LSN(0x2FFF000).String() || r.ReceiveLSN != walstream.LSN(0x3000000).String() {
		t.Fatalf("listed %+v", r)
	}
	get := func(path string) int {
		res, err := http.Get(m2.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var h feed.HealthResponse
		json.NewDecoder(res.Body).Decode(&h)
		return res.StatusCode
	}
	if code := get("/v1/replicas/s1/health?min_lsn=0/2FFF000"); code != http.StatusOK {
		t.Errorf("health at its replay: %d", code)
	}
	if code := get("/v1/replicas/s1/health?min_lsn=0/3000000"); code != http.StatusServiceUnavailable {
		t.Errorf("health past its replay: %d", code)
	}
	if code := get("/v1/replicas/unmanaged/health"); code != http.StatusNotFound {
		t.Errorf("health of an unmanaged child: %d", code)
	}
	if code := get("/v1/replicas?min_lsn=zz"); code != http.StatusBadRequest {
		t.Errorf("bad min_lsn: %d", code)
	}
}

package relay

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/internal/feed"
	"github.com/walrelay/walrelay/walstream"
)

// A silent streaming child is asked for a status reply every
// ReplyInterval, and the relay's feed lists its standby children (not a
// relay child) with the replay position they reported, filtered by the
// query; the health check says 200 or 503 with the reason.
func TestFeedListsStandbyChildren(t *testing.T) {
	f := newFixtureWith(t, 2*testSeg, walstream.StoreOptions{TailBytes: 64 << 20}, func(c *Config) { c.ReplyInterval = 100 * time.Millisecond })
	f.appendWAL(t, 100_000)
	mid := f.end
	f.appendWAL(t, 100_000)
	f.up.end = f.end
	ctx, cancel := context.WithCancel(context.Background())
	sampled := make(chan error, 1)
	go func() { sampled <- f.srv.RunFeedSampler(ctx, f.up, 10*time.Millisecond) }()
	defer func() { cancel(); <-sampled }()

	sb := startStream(t, f.connect(t, ""), "START_REPLICATION 0/200000 TIMELINE 1")
	sb.receive(t, 2*testSeg, f.end)
	sb.reply(t, f.end, f.end, false)
	// Replayed only up to mid: report that as apply.
	buf := walstream.AppendStandbyStatus(nil, walstream.StandbyStatus{Write: f.end, Flush: f.end, Apply: mid, SendTime: walstream.PGTime(time.Now())})
	sb.fe.Send(&pgproto3.CopyData{Data: buf})
	if err := sb.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	rl := startStream(t, f.connect(t, "application_name=r2 walrelay.node=r2"), "START_REPLICATION 0/200000 TIMELINE 1")
	rl.receive(t, 2*testSeg, f.end)
	rl.reply(t, f.end, f.end, false)

	// Silent now: a keepalive asking for a reply comes within a few
	// intervals.
	sb.nc.SetReadDeadline(time.Now().Add(2 * time.Second))
	for asked := false; !asked; {
		msg, err := sb.fe.Receive()
		if err != nil {
			t.Fatalf("no reply request from a relay with ReplyInterval 100ms: %v", err)
		}
		if cd, ok := msg.(*pgproto3.CopyData); ok && cd.Data[0] == 'k' {
			k, err := walstream.ParseKeepalive(cd.Data)
			if err != nil {
				t.Fatal(err)
			}
			asked = k.ReplyRequested
		}
	}

	mux := http.NewServeMux()
	f.srv.FeedHandlers(mux)
	hs := httptest.NewServer(mux)
	defer hs.Close()
	get := func(path string) (int, []byte) {
		resp, err := http.Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var raw json.RawMessage
		json.NewDecoder(resp.Body).Decode(&raw)
		return resp.StatusCode, raw
	}
	var resp feed.Response
	waitFor(t, func() bool {
		_, b := get("/v1/replicas")
		resp = feed.Response{}
		json.Unmarshal(b, &resp)
		return len(resp.Replicas) == 1
	})
	r := resp.Replicas[0]
	if r.Name != "test" || r.ReplayLSN != mid.String() || r.Host != "127.0.0.1" || r.Source != "relay" || r.LagBytes != uint64(f.end-mid) {
		t.Fatalf("listed %+v (replayed %s, primary at %s)", r, mid, f.end)
	}
	if _, b := get("/v1/replicas?min_lsn=" + f.end.String()); json.Unmarshal(b, &resp) != nil || len(resp.Replicas) != 0 {
		t.Fatalf("min_lsn past its replay: %s", b)
	}
	if code, b := get("/v1/replicas?min_lsn=" + mid.String()); code != 200 || json.Unmarshal(b, &resp) != nil || len(resp.Replicas) != 1 {
		t.Fatalf("min_lsn at its replay: %d %s", code, b)
	}
	f.srv.SetChildEndpoints(map[string]Endpoint{"test": {Host: "db1", Port: 5433, Zone: "z"}})
	if _, b := get("/v1/replicas?zone=z"); json.Unmarshal(b, &resp) != nil || len(resp.Replicas) != 1 || resp.Replicas[0].Port != 5433 || resp.Replicas[0].Host != "db1" {
		t.Fatalf("endpoint from the managers: %s", b)
	}
	if code, b := get("/v1/replicas/test/health?min_lsn=" + mid.String()); code != 200 {
		t.Fatalf("health at its replay: %d %s", code, b)
	}
	if code, b := get("/v1/replicas/test/health?min_lsn=" + f.end.String()); code != 503 {
		t.Fatalf("health past its replay: %d %s", code, b)
	}
	if code, _ := get("/v1/replicas/r2/health"); code != 503 {
		t.Fatalf("a relay child's health: %d", code)
	}
	if code, b := get("/v1/replicas?max_lag=soon"); code != 400 {
		t.Fatalf("bad max_lag: %d %s", code, b)
	}
}

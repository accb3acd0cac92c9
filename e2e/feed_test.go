package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/feed"
	"github.com/walrelay/walrelay/internal/pgcluster"
)

// getFeed reads a replica feed (a manager's or a relay's) with params.
func getFeed(t testing.TB, base string, params url.Values) feed.Response {
	t.Helper()
	var resp feed.Response
	code, body := httpGet(t, base+"/v1/replicas?"+params.Encode())
	if code != http.StatusOK {
		t.Fatalf("GET /v1/replicas?%s: %d %s", params.Encode(), code, body)
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func httpGet(t testing.TB, u string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func health(t testing.TB, base, name string, params url.Values) (int, feed.HealthResponse) {
	t.Helper()
	code, body := httpGet(t, base+"/v1/replicas/"+name+"/health?"+params.Encode())
	var h feed.HealthResponse
	json.Unmarshal(body, &h)
	return code, h
}

func replayLSN(t testing.TB, c *pgcluster.Cluster) uint64 {
	t.Helper()
	l, err := c.QueryLSN(context.Background(), "SELECT pg_last_wal_replay_lsn()")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func names(rs []feed.Replica) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

func listed(rs []feed.Replica, name string) *feed.Replica {
	for i := range rs {
		if rs[i].Name == name {
			return &rs[i]
		}
	}
	return nil
}

// The replica feed against real standbys: s1 and s2 under relay r1, s3
// under r2, which streams from r1 (two relays between it and the primary).
//  1. With min_lsn, only standbys that have replayed the LSN are listed
//     (each checked with pg_last_wal_replay_lsn() right after the answer);
//     a paused standby never is; --wait-lsn returns the first standby to get
//     there and fails on timeout.
//  2. Under pgbench, a standby whose replay is paused leaves the max_lag
//     list and its health check turns 503 within a bounded time, and comes
//     back after pg_wal_replay_resume().
//  3. s3, behind two relays, is reported with its own endpoint, parent and
//     positions, by the managers and by r2's own feed.
func TestReplicaFeed(t *testing.T) {
	t.Parallel() // waits on restarts, faults and timers more than it uses the CPU
	requirePG(t)
	ctx := context.Background()
	mt := newManagedTree(t, nil, nil, []string{"r1", "r2"}, []standbySpec{
		{name: "s1", parent: "r1", zone: "a", tier: "high"},
		{name: "s2", parent: "r1", zone: "b"},
		{name: "s3", parent: "r2", zone: "a"},
	})
	cliT(t, "move", "r2", "--to", "r1", "--manager", mt.mgr.url)
	r1, r2 := mt.relays["r1"], mt.relays["r2"]
	waitFor(t, 30*time.Second, "r2 streaming from r1", func() (bool, error) {
		ups, _ := r2.Status(t)["upstream"].(map[string]any)
		target, _ := ups["target"].(string)
		return ups["state"] == "streaming" && strings.Contains(target, fmt.Sprintf("port=%d", r1.Port())), nil
	})
	base := mt.mgr.url
	waitFor(t, 30*time.Second, "all three standbys in the feed", func() (bool, error) {
		return len(getFeed(t, base, nil).Replicas) == 3, nil
	})

	// Bad input is refused with a reason.
	if code, body := httpGet(t, base+"/v1/replicas?max_lag=soon"); code != http.StatusBadRequest || !strings.Contains(string(body), "max_lag") {
		t.Errorf("max_lag=soon: %d %s", code, body)
	}
	if code, _ := health(t, base, "nosuch", nil); code != http.StatusNotFound {
		t.Errorf("health of an unknown standby: %d", code)
	}

	t.Run("min_lsn", func(t *testing.T) {
		s2 := mt.standbys["s2"]
		if err := s2.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "s2 paused", func() (bool, error) {
			st, err := s2.QueryLSN(ctx, "SELECT CASE WHEN pg_get_wal_replay_pause_state() = 'paused' THEN '0/1' ELSE '0/0' END")
			return st == 1, err
		})
		seen := map[string]int{}
		for i := 0; i < 15; i++ {
			if err := mt.primary.Exec(ctx, fmt.Sprintf("INSERT INTO acked VALUES (%d)", i)); err != nil {
				t.Fatal(err)
			}
			lsn, err := mt.primary.CurrentLSN(ctx)
			if err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				resp := getFeed(t, base, url.Values{"min_lsn": {pgcluster.FormatLSN(lsn)}})
				for _, r := range resp.Replicas {
					if got := replayLSN(t, mt.standbys[r.Name]); got < lsn {
						t.Fatalf("%s listed for min_lsn %s but has replayed only %s", r.Name, pgcluster.FormatLSN(lsn), pgcluster.FormatLSN(got))
					}
					seen[r.Name]++
				}
				if listed(resp.Replicas, "s2") != nil {
					t.Fatalf("paused s2 listed for min_lsn %s", pgcluster.FormatLSN(lsn))
				}
				if len(resp.Replicas) == 2 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("min_lsn %s: only %v listed after 5 s", pgcluster.FormatLSN(lsn), names(resp.Replicas))
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		t.Logf("listings per standby over 15 writes: %v (s2 paused, never listed)", seen)
		now, _ := mt.primary.CurrentLSN(ctx)
		if code, h := health(t, base, "s2", url.Values{"min_lsn": {pgcluster.FormatLSN(now)}}); code != http.StatusServiceUnavailable {
			t.Errorf("paused s2 health for the primary's LSN: %d %+v", code, h)
		}

		// --wait-lsn: the first standby to replay a fresh write.
		if err := mt.primary.Exec(ctx, "INSERT INTO acked VALUES (100)"); err != nil {
			t.Fatal(err)
		}
		lsn, _ := mt.primary.CurrentLSN(ctx)
		out := cliT(t, "replicas", "--manager", base, "--wait-lsn", pgcluster.FormatLSN(lsn), "--timeout", "5s", "-o", "json")
		var first feed.Replica
		if err := json.Unmarshal([]byte(out), &first); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if first.Name == "s2" || replayLSN(t, mt.standbys[first.Name]) < lsn {
			t.Fatalf("--wait-lsn %s returned %+v", pgcluster.FormatLSN(lsn), first)
		}
		far := pgcluster.FormatLSN(lsn + 1<<30)
		began := time.Now()
		if out, err := walrelayCLI("replicas", "--manager", base, "--wait-lsn", far, "--timeout", "1s"); err == nil || !strings.Contains(out, "no standby replayed") {
			t.Fatalf("--wait-lsn beyond the primary: %v %s", err, out)
		}
		if d := time.Since(began); d < time.Second || d > 8*time.Second {
			t.Errorf("--timeout 1s took %s", d)
		}
		// The paused standby comes back once resumed.
		if err := s2.Exec(ctx, "SELECT pg_wal_replay_resume()"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "resumed s2 listed for min_lsn", func() (bool, error) {
			return listed(getFeed(t, base, url.Values{"min_lsn": {pgcluster.FormatLSN(lsn)}}).Replicas, "s2") != nil, nil
		})
	})

	t.Run("max_lag", func(t *testing.T) {
		// The load runs until the checks are done, at most 25 s.
		defer backgroundPgbench(t, mt.primary, 2, 25*time.Second, "-R", "200")()
		q := url.Values{"max_lag": {"1s"}}
		waitFor(t, 20*time.Second, "all three within 1s under pgbench", func() (bool, error) {
			return len(getFeed(t, base, q).Replicas) == 3, nil
		})
		s1 := mt.standbys["s1"]
		if code, h := health(t, base, "s1", q); code != http.StatusOK {
			t.Fatalf("s1 health before the pause: %d %+v", code, h)
		}
		if err := s1.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
			t.Fatal(err)
		}
		paused := time.Now()
		waitFor(t, 10*time.Second, "paused s1 leaving the 1s list", func() (bool, error) {
			return listed(getFeed(t, base, q).Replicas, "s1") == nil, nil
		})
		left := time.Since(paused)
		code, h := health(t, base, "s1", q)
		if code != http.StatusServiceUnavailable || !strings.Contains(h.Reason, "lags") {
			t.Fatalf("paused s1 health: %d %+v", code, h)
		}
		if h.Replica == nil || !h.Replica.Paused {
			t.Errorf("health of paused s1 does not say it is paused: %+v", h.Replica)
		}
		t.Logf("paused s1 left the max_lag=1s list after %.2fs; health: 503 %q", left.Seconds(), h.Reason)
		// The relay's own feed says the same of its child.
		waitFor(t, 10*time.Second, "r1's feed dropping s1", func() (bool, error) {
			return listed(getFeed(t, "http://"+r1.HTTP, q).Replicas, "s1") == nil, nil
		})
		if err := s1.Exec(ctx, "SELECT pg_wal_replay_resume()"); err != nil {
			t.Fatal(err)
		}
		resumed := time.Now()
		waitFor(t, 10*time.Second, "resumed s1 healthy again", func() (bool, error) {
			code, _ := health(t, base, "s1", q)
			return code == http.StatusOK, nil
		})
		t.Logf("resumed s1 healthy again after %.2fs", time.Since(resumed).Seconds())
		// Filters and order: tier and zone.
		if got := names(getFeed(t, base, url.Values{"tier": {"high"}}).Replicas); strings.Join(got, ",") != "s1" {
			t.Errorf("tier=high: %v", got)
		}
		for _, r := range getFeed(t, base, url.Values{"zone": {"a"}}).Replicas {
			if r.Zone != "a" {
				t.Errorf("zone=a listed %s in %q", r.Name, r.Zone)
			}
		}
		if got := getFeed(t, base, url.Values{"prefer_zone": {"b"}}).Replicas; len(got) == 0 || got[0].Name != "s2" {
			t.Errorf("prefer_zone=b: %v", names(got))
		}
	})

	t.Run("behind_two_relays", func(t *testing.T) {
		s3 := mt.standbys["s3"]
		if err := mt.primary.Exec(ctx, "INSERT INTO acked VALUES (200)"); err != nil {
			t.Fatal(err)
		}
		lsn, _ := mt.primary.CurrentLSN(ctx)
		var r *feed.Replica
		waitFor(t, 10*time.Second, "s3 listed for the new LSN", func() (bool, error) {
			r = listed(getFeed(t, base, url.Values{"min_lsn": {pgcluster.FormatLSN(lsn)}}).Replicas, "s3")
			return r != nil, nil
		})
		if r.Parent != "r2" || r.Port != s3.Port || r.Host != "127.0.0.1" || r.Zone != "a" || r.LastXactReplayTimestamp == "" {
			t.Errorf("s3 reported as %+v", r)
		}
		if got := replayLSN(t, s3); got < lsn {
			t.Errorf("s3 listed at %s but has replayed %s", pgcluster.FormatLSN(lsn), pgcluster.FormatLSN(got))
		}
		// r2's own feed: its one child, with the endpoint the managers
		// registered; r1's lists its standbys but not relay r2.
		waitFor(t, 10*time.Second, "s3 in r2's feed with its endpoint", func() (bool, error) {
			rs := getFeed(t, "http://"+r2.HTTP, url.Values{"min_lsn": {pgcluster.FormatLSN(lsn)}}).Replicas
			x := listed(rs, "s3")
			return len(rs) == 1 && x != nil && x.Port == s3.Port && x.Source == "relay", nil
		})
		rs := getFeed(t, "http://"+r1.HTTP, nil).Replicas
		if listed(rs, "r2") != nil || listed(rs, "s1") == nil || listed(rs, "s2") == nil {
			t.Errorf("r1's feed: %v", names(rs))
		}
	})
}

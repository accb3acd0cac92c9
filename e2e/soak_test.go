package e2e

import (
	"context"
	"math/rand/v2"
	"os"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// TestSoak runs a managed tree under steady pgbench for WALRELAY_SOAK
// (e.g. 20m; skipped when unset): a relay is SIGKILLed and restarted every
// minute, and halfway through the primary is switched over (and the old one
// rejoined). It prints each standby's lag percentiles, and at the end checks
// that nothing diverged: every standby's tables equal the primary's and every
// acknowledged commit of a writer is there.
//
//	make soak DURATION=20m
func TestSoak(t *testing.T) {
	d, err := time.ParseDuration(os.Getenv("WALRELAY_SOAK"))
	if err != nil || d <= 0 {
		t.Skip("set WALRELAY_SOAK=20m (make soak DURATION=20m)")
	}
	mt := newManagedTree(t, map[string]string{"synchronous_standby_names": "ANY 1 (r1, r2, r3)"}, nil,
		[]string{"r1", "r2", "r3"}, []standbySpec{{name: "c1", promotable: true}, {name: "s1"}, {name: "s2"}, {name: "s3"}})
	var cur atomic.Pointer[pgcluster.Cluster]
	cur.Store(mt.primary)
	w := startAckWriter(func() *pgcluster.Cluster { return cur.Load() })
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { // steady pgbench on whatever is the primary
		for ctx.Err() == nil {
			cur.Load().Pgbench(ctx, 2, 30*time.Second, "-R", "300")
		}
	}()
	lagBytes := map[string][]float64{}
	lagSecs := map[string][]float64{}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	started := time.Now()
	nextKill := started.Add(time.Minute)
	switched := false
	restarts := 0
	for time.Since(started) < d {
		time.Sleep(5 * time.Second)
		if tr, err := treeJSON(mt.mgr.url); err == nil && tr.Status != nil {
			for name := range mt.standbys {
				if st, ok := tr.Status.Nodes[name]; ok && st.LagBytes != nil && st.LagSeconds != nil {
					lagBytes[name] = append(lagBytes[name], float64(*st.LagBytes))
					lagSecs[name] = append(lagSecs[name], *st.LagSeconds)
				}
			}
		}
		if time.Now().After(nextKill) {
			ids := []string{"r1", "r2", "r3"}
			id := ids[rng.IntN(len(ids))]
			mt.relays[id].Kill()
			time.Sleep(time.Second)
			mt.relays[id].Restart(t)
			restarts++
			nextKill = time.Now().Add(time.Minute)
		}
		if !switched && time.Since(started) > d/2 {
			out := cliT(t, "switchover", "--to", "c1", "--manager", mt.mgr.url)
			cur.Store(mt.nodes["c1"])
			t.Logf("switchover: %s", out)
			old := mt.nodes["pg"]
			t.Logf("rejoin: %s", cliT(t, "rejoin", "pg", "--pgdata", old.DataDir, "--conninfo", old.ConnString(), "--log-file", old.LogFile, "--manager", mt.mgr.url))
			switched = true
		}
	}
	stop()
	acked := w.finish()
	name, tli := mt.currentPrimary(t)
	primary := mt.nodes[name]
	assertAcked(t, primary, acked)
	assertOnTimeline(t, primary, tli, standbysExcept(mt, name)...)
	pct := func(v []float64, p int) float64 {
		if len(v) == 0 {
			return 0
		}
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		return s[min(len(s)-1, len(s)*p/100)]
	}
	t.Logf("soak of %s: %d relay restarts, 1 switchover, %d acknowledged commits, no divergence", d, restarts, acked)
	names := make([]string, 0, len(lagBytes))
	for n := range lagBytes {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		t.Logf("%s lag over %d samples: bytes p50 %.0f p99 %.0f max %.0f; seconds p50 %.1f p99 %.1f max %.1f", n, len(lagBytes[n]),
			pct(lagBytes[n], 50), pct(lagBytes[n], 99), pct(lagBytes[n], 100), pct(lagSecs[n], 50), pct(lagSecs[n], 99), pct(lagSecs[n], 100))
	}
}

package e2e

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/topology"
)

// BenchmarkPrimaryFailover measures automatic failover at default settings
// (--primary-failure-timeout 3 s, heartbeats 1 s) with a relay in
// synchronous_standby_names: SIGKILL the primary while a writer commits
// one row per transaction, and report
//   - write unavailability: the longest time between two acknowledged
//     commits (the last on the old primary, the first on the new one);
//   - the time from the kill until every standby streams on the new
//     timeline;
//   - acknowledged commits lost (must be 0).
//
// Each run ends with the old primary rejoining (walrelay rejoin) as a
// promotable standby, so runs alternate between two nodes. Runs:
// WALRELAY_BENCH_RUNS, default 3.
//
//	go test -run '^$' -bench PrimaryFailover -benchtime 1x ./e2e/
func BenchmarkPrimaryFailover(b *testing.B) {
	requirePG(b)
	runs := 3
	if v, err := strconv.Atoi(os.Getenv("WALRELAY_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	mt := newManagedTree(b, map[string]string{"synchronous_standby_names": "ANY 1 (r1, r2)"}, nil,
		[]string{"r1", "r2"}, []standbySpec{{name: "c1", promotable: true}, {name: "s1"}, {name: "s2"}})
	client := &topology.Client{URLs: []string{mt.mgr.url}}
	var cur atomic.Pointer[pgcluster.Cluster]
	cur.Store(mt.primary)
	pctx, stopPoll := context.WithCancel(context.Background())
	defer stopPoll()
	go func() { // the writer follows the committed primary, as a proxy would
		for pctx.Err() == nil {
			if tr, err := client.Tree(pctx); err == nil && mt.nodes[tr.Tree.Primary] != nil {
				cur.Store(mt.nodes[tr.Tree.Primary])
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	w := startAckWriter(func() *pgcluster.Cluster { return cur.Load() })
	var unavail, converge []time.Duration
	lost := int64(0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for run := 0; run < runs; run++ {
			time.Sleep(2 * time.Second)
			old, _ := mt.currentPrimary(b)
			w.takeMaxGap()
			if err := mt.nodes[old].Kill(); err != nil {
				b.Fatal(err)
			}
			killed := time.Now()
			newName, tli := mt.waitNewPrimary(b, old, 60*time.Second)
			ctx := context.Background()
			waitFor(b, 60*time.Second, "every standby on the new timeline", func() (bool, error) {
				for name, c := range mt.nodes {
					if name == old || name == newName {
						continue
					}
					conn, err := c.Connect(ctx)
					if err != nil {
						return false, nil
					}
					var got int
					err = conn.QueryRow(ctx, "SELECT COALESCE((SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'), 0)").Scan(&got)
					conn.Close(ctx)
					if err != nil || uint32(got) != tli {
						return false, nil
					}
				}
				return true, nil
			})
			conv := time.Since(killed)
			// Let the writer commit on the new primary before reading the gap.
			before := w.acked.Load()
			waitFor(b, 30*time.Second, "commits on the new primary", func() (bool, error) { return w.acked.Load() > before+10, nil })
			gap := w.takeMaxGap()
			unavail, converge = append(unavail, gap), append(converge, conv)
			b.Logf("run %d: %s killed, %s promoted on timeline %d; writes unavailable %.2fs; every standby on timeline %d after %.2fs",
				run+1, old, newName, tli, gap.Seconds(), tli, conv.Seconds())
			// The old primary comes back as a standby for the next run.
			oc := mt.nodes[old]
			if out, err := walrelayCLI("rejoin", old, "--pgdata", oc.DataDir, "--conninfo", oc.ConnString(), "--log-file", oc.LogFile, "--manager", mt.mgr.url); err != nil {
				b.Fatalf("rejoin %s: %v\n%s", old, err, out)
			}
			waitFor(b, 60*time.Second, old+" streaming again", func() (bool, error) {
				_, streaming, err := receiverOf(ctx, oc)
				return err == nil && streaming, nil
			})
		}
	}
	b.StopTimer()
	acked := w.finish()
	name, _ := mt.currentPrimary(b)
	var have int64
	conn, err := mt.nodes[name].Connect(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	conn.QueryRow(context.Background(), "SELECT count(*) FROM acked WHERE id <= $1", acked).Scan(&have)
	conn.Close(context.Background())
	lost = acked - have
	med := func(ds []time.Duration) (time.Duration, time.Duration) {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2], s[len(s)-1]
	}
	um, ux := med(unavail)
	cm, cx := med(converge)
	b.ReportMetric(um.Seconds(), "unavailable-median-s")
	b.ReportMetric(cm.Seconds(), "timeline-median-s")
	b.ReportMetric(float64(lost), "commits-lost")
	var all []string
	for i := range unavail {
		all = append(all, fmt.Sprintf("%.2f/%.2f", unavail[i].Seconds(), converge[i].Seconds()))
	}
	b.Logf("over %d failovers: writes unavailable median %.2fs (max %.2fs; target 10 s), every standby on the new timeline median %.2fs (max %.2fs; target 15 s), %d of %d acknowledged commits lost; runs (unavailable/timeline) %s",
		len(unavail), um.Seconds(), ux.Seconds(), cm.Seconds(), cx.Seconds(), lost, acked, strings.Join(all, " "))
	if lost != 0 {
		b.Errorf("%d acknowledged commits lost", lost)
	}
}

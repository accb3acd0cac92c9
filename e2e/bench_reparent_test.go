package e2e

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// BenchmarkRelayFailureReattach measures, at default settings (heartbeat
// 1 s, --failure-timeout 5 s), the time from SIGKILL of a relay to every one
// of its children streaming again from its new parent: detection,
// re-assignment through Raft, re-pointing (a relay switches upstream live,
// a standby gets ALTER SYSTEM + pg_reload_conf) and reattach. pgbench writes
// throughout; the gap is how much WAL the primary had written beyond a
// child's last received position when it streamed again. Runs
// (WALRELAY_BENCH_RUNS, default 5) alternate between two relays: the killed
// one comes back as a leaf and takes the children the next time.
//
//	go test -run '^$' -bench RelayFailureReattach -benchtime 1x ./e2e/
func BenchmarkRelayFailureReattach(b *testing.B) {
	requirePG(b)
	runs := 5
	if v, err := strconv.Atoi(os.Getenv("WALRELAY_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	ctx := context.Background()
	primary := newPgbenchPrimary(b, 1)
	m := startManagerProc(b, "m1", "")
	waitFor(b, 20*time.Second, "manager leader", func() (bool, error) {
		_, err := walrelayCLI("tree", "--manager", m.url)
		return err == nil, nil
	})
	if out, err := walrelayCLI("primary", "set", "pg", "--conninfo", primary.ReplicationConnString(), "--manager", m.url); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	relays := map[string]*relayProc{}
	for _, id := range []string{"r1", "r2"} {
		relays[id] = startRelay(b, id, "", "--manager", m.url, "--log-level", "info")
	}
	standbys := map[string]*pgcluster.Cluster{}
	for _, name := range []string{"s1", "s2", "s3"} {
		standbys[name] = newStandbyWith(b, primary, name, primary.ReplicationConnString(), map[string]string{"wal_retrieve_retry_interval": "1s"})
		if out, err := walrelayCLI("standby", "add", name, "--conninfo", standbys[name].ConnString(), "--manager", m.url); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
	parentPort := func(name string) int {
		tr, err := treeJSON(m.url)
		if err != nil || tr.Tree.Nodes[name] == nil {
			return 0
		}
		if r := relays[tr.Tree.Nodes[name].Parent]; r != nil {
			return r.Port()
		}
		return 0
	}
	attached := func(name string) bool {
		port, streaming, err := receiverOf(ctx, standbys[name])
		return err == nil && streaming && port != 0 && port == parentPort(name)
	}
	waitFor(b, 60*time.Second, "standbys streaming from relays", func() (bool, error) {
		for name := range standbys {
			if !attached(name) {
				return false, nil
			}
		}
		return true, nil
	})
	lctx, stopLoad := context.WithCancel(ctx)
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(lctx, 2, time.Hour, "-R", "200") }()
	defer func() { stopLoad(); <-load }()

	var times []time.Duration
	var gaps []uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for run := 0; run < runs; run++ {
			tr, err := treeJSON(m.url)
			if err != nil {
				b.Fatal(err)
			}
			victim, most := "", -1
			for id := range relays {
				if n := len(tr.Tree.Children(id)); n > most {
					victim, most = id, n
				}
			}
			children := tr.Tree.Children(victim)
			time.Sleep(time.Second)
			relays[victim].Kill()
			killed := time.Now()
			lastRecv := map[string]uint64{}
			var gap uint64
			waitFor(b, 60*time.Second, "children of "+victim+" streaming again", func() (bool, error) {
				for _, c := range children {
					if attached(c) {
						continue
					}
					if l, err := standbys[c].QueryLSN(ctx, "SELECT pg_last_wal_receive_lsn()"); err == nil {
						lastRecv[c] = l
					}
					return false, nil
				}
				return true, nil
			})
			d := time.Since(killed)
			if cur, err := primary.CurrentLSN(ctx); err == nil {
				for _, l := range lastRecv {
					if cur > l && cur-l > gap {
						gap = cur - l
					}
				}
			}
			times, gaps = append(times, d), append(gaps, gap)
			b.Logf("run %d: killed %s with children %v; all streaming again after %.2fs, WAL gap %d kB", run+1, victim, children, d.Seconds(), gap/1024)
			relays[victim].Restart(b)
			waitFor(b, 30*time.Second, victim+" alive again", func() (bool, error) {
				tr, err := treeJSON(m.url)
				return err == nil && tr.Tree.Nodes[victim] != nil && tr.Tree.Nodes[victim].State == "alive", nil
			})
		}
	}
	b.StopTimer()
	sorted := append([]time.Duration(nil), times...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	med, worst := sorted[len(sorted)/2], sorted[len(sorted)-1]
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	b.ReportMetric(med.Seconds(), "reattach-median-s")
	b.ReportMetric(worst.Seconds(), "reattach-max-s")
	b.ReportMetric(float64(gaps[len(gaps)/2])/1024, "gap-median-kB")
	var all []string
	for _, d := range times {
		all = append(all, fmt.Sprintf("%.2f", d.Seconds()))
	}
	b.Logf("relay death to every child streaming again over %d runs: median %.2fs, max %.2fs (target: 10 s); runs %s s; WAL gap median %d kB, max %d kB",
		len(times), med.Seconds(), worst.Seconds(), strings.Join(all, " "), gaps[len(gaps)/2]/1024, gaps[len(gaps)-1]/1024)
}

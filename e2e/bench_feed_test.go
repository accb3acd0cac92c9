package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// BenchmarkReplicaFeed measures the replica feed of a managed tree (two
// standbys under one relay, light pgbench):
//
//   - freshness: a marker is committed on the primary; one goroutine polls
//     standby s1's pg_last_wal_replay_lsn() until it has replayed the
//     marker, another asks the feed for zone=f (s1 only) with
//     min_lsn=marker&wait=5s. Freshness is the time from the first to the
//     second (targets: p99 within 1 s);
//
//   - answer latency: 1,000 requests per second for 10 s, open loop, of
//     GET /v1/replicas?max_lag=1s (target: p99 within 10 ms).
//
//     go test -run '^$' -bench ReplicaFeed -benchtime 1x ./e2e/
func BenchmarkReplicaFeed(b *testing.B) {
	requirePG(b)
	ctx := context.Background()
	mt := newManagedTree(b, nil, nil, []string{"r1"}, []standbySpec{{name: "s1", zone: "f"}, {name: "s2"}})
	base := mt.mgr.url
	waitFor(b, 30*time.Second, "both standbys in the feed", func() (bool, error) {
		return len(getFeed(b, base, nil).Replicas) == 2, nil
	})
	load := make(chan error, 1)
	lctx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	go func() { load <- mt.primary.Pgbench(lctx, 1, 10*time.Minute, "-R", "100") }()
	s1 := mt.standbys["s1"]
	sconn, err := pgconn.Connect(ctx, s1.ConnString())
	if err != nil {
		b.Fatal(err)
	}
	defer sconn.Close(ctx)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 200}}

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Freshness.
		var fresh []time.Duration
		misses := 0
		for k := 0; k < 200; k++ {
			// Out of step with the leader's 100 ms reads: a marker right
			// after each answer would always land just after a read.
			time.Sleep(time.Duration(rand.Int64N(int64(150 * time.Millisecond))))
			if err := mt.primary.Exec(ctx, fmt.Sprintf("INSERT INTO acked VALUES (%d)", i*1000+k)); err != nil {
				b.Fatal(err)
			}
			lsn, err := mt.primary.CurrentLSN(ctx)
			if err != nil {
				b.Fatal(err)
			}
			replayed := make(chan time.Time, 1)
			go func() {
				for {
					res, err := sconn.Exec(ctx, "SELECT pg_last_wal_replay_lsn()").ReadAll()
					if err == nil && len(res) == 1 && len(res[0].Rows) == 1 {
						if v, _ := pgcluster.ParseLSN(string(res[0].Rows[0][0])); v >= lsn {
							replayed <- time.Now()
							return
						}
					}
					time.Sleep(200 * time.Microsecond)
				}
			}()
			u := base + "/v1/replicas?" + url.Values{"zone": {"f"}, "min_lsn": {pgcluster.FormatLSN(lsn)}, "wait": {"5s"}}.Encode()
			resp, err := client.Get(u)
			if err != nil {
				b.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			listedAt := time.Now()
			rt := <-replayed
			if len(body) < 20 || !strings.Contains(string(body), `"name":"s1"`) {
				misses++
				continue
			}
			fresh = append(fresh, max(0, listedAt.Sub(rt)))
		}
		f50, f99 := percentile(fresh, 50), percentile(fresh, 99)
		b.ReportMetric(ms(f50), "fresh-p50-ms")
		b.ReportMetric(ms(f99), "fresh-p99-ms")
		b.Logf("freshness over %d markers: p50 %.1f ms, p99 %.1f ms, max %.1f ms; %d not listed within 5 s",
			len(fresh), ms(f50), ms(f99), ms(percentile(fresh, 100)), misses)

		// Answer latency under 1,000 requests per second.
		const rate, dur = 1000, 10 * time.Second
		var mu sync.Mutex
		var lat []time.Duration
		errs := 0
		var wg sync.WaitGroup
		tick := time.NewTicker(time.Second / rate)
		start := time.Now()
		sent := 0
		for now := range tick.C {
			if now.Sub(start) > dur {
				break
			}
			// Open loop at the target rate: a tick the scheduler dropped
			// is made up at the next one.
			for due := int(now.Sub(start) * rate / time.Second); sent < due; {
				sent++
				wg.Add(1)
				go func() {
					defer wg.Done()
					t0 := time.Now()
					resp, err := client.Get(base + "/v1/replicas?max_lag=1s")
					if err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					d := time.Since(t0)
					mu.Lock()
					defer mu.Unlock()
					if err != nil || resp.StatusCode != http.StatusOK {
						errs++
						return
					}
					lat = append(lat, d)
				}()
			}
		}
		tick.Stop()
		wg.Wait()
		l50, l99 := percentile(lat, 50), percentile(lat, 99)
		b.ReportMetric(ms(l50), "answer-p50-ms")
		b.ReportMetric(ms(l99), "answer-p99-ms")
		b.ReportMetric(float64(sent)/dur.Seconds(), "req/s")
		b.Logf("answers: %d requests in %s (%.0f/s), p50 %.2f ms, p99 %.2f ms, max %.2f ms, %d errors",
			sent, dur, float64(sent)/dur.Seconds(), ms(l50), ms(l99), ms(percentile(lat, 100)), errs)
	}
	b.StopTimer()
	stopLoad()
	<-load
}

package e2e

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/walstream"
)

// BenchmarkRelayHop measures the replay lag relays add: one standby
// streams from the primary, another through a chain of 1, 2 or 3 relays
// (relay-to-relay links compressed), both under the same pgbench run; each
// depth is a run of its own so that the 2-core machine is not shared by
// more processes than needed. A probe commits a marker every 20 ms on the
// primary; each standby is polled for its replay LSN, and a marker's lag is
// the time from issuing its commit to the first poll that shows it
// replayed.
//
//	go test -run '^$' -bench RelayHop -benchtime 1x ./e2e/
//
// WALRELAY_BENCH_RELAY_ARGS adds arguments to every relay (e.g.
// "--sync-delay 200us").
func BenchmarkRelayHop(b *testing.B) {
	for depth := 1; depth <= 3; depth++ {
		b.Run(fmt.Sprintf("relays=%d", depth), func(b *testing.B) { benchHop(b, depth) })
	}
}

func benchHop(b *testing.B, depth int) {
	requirePG(b)
	primary := newPgbenchPrimary(b, 5)
	ctx := context.Background()
	if err := primary.Exec(ctx, "CREATE TABLE probe(t timestamptz)"); err != nil {
		b.Fatal(err)
	}
	upstream := primary.ReplicationConnString()
	var last *relayProc
	var relays []*relayProc
	for i := 1; i <= depth; i++ {
		args := append([]string{"--log-level", "info"}, strings.Fields(os.Getenv("WALRELAY_BENCH_RELAY_ARGS"))...)
		last = startRelay(b, fmt.Sprintf("r%d", i), upstream, args...)
		relays = append(relays, last)
		upstream = last.Conninfo()
	}
	standbys := []*pgcluster.Cluster{
		newStandby(b, primary, "direct", primary.ReplicationConnString()),
		newStandby(b, primary, "relayed", last.Conninfo()),
	}
	target, _ := primary.CurrentLSN(ctx)
	for _, sb := range standbys {
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		if err := sb.WaitReplayed(wctx, target); err != nil {
			b.Fatal(err)
		}
		cancel()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		lags := measureHop(b, primary, standbys, 15*time.Second)
		d50, d99 := percentile(lags[0], 50), percentile(lags[0], 99)
		p50, p99 := percentile(lags[1], 50), percentile(lags[1], 99)
		b.ReportMetric(ms(d50), "direct-p50-ms")
		b.ReportMetric(ms(d99), "direct-p99-ms")
		b.ReportMetric(ms(p50-d50), "added-p50-ms")
		b.ReportMetric(ms(p99-d99), "added-p99-ms")
		b.Logf("%d relay(s): p50 %.2f ms p99 %.2f ms; direct p50 %.2f p99 %.2f; added p50 %.2f p99 %.2f (%d markers)",
			depth, ms(p50), ms(p99), ms(d50), ms(d99), ms(p50-d50), ms(p99-d99), len(lags[1]))
		// Each hop waits for its fsync before it passes WAL on: the floor
		// of what a hop adds.
		for _, r := range relays {
			h := relayHistogram(b, r, "walrelay_store_fsync_seconds")
			b.Logf("relay %s: fsync p50 <= %.2f ms, p99 <= %.2f ms (%d fsyncs)", r.ID, 1000*h.quantile(0.5), 1000*h.quantile(0.99), int(h.count))
		}
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, len(s)*p/100)]
}

type lsnSample struct {
	at  time.Time
	lsn uint64
}

// measureHop runs pgbench for d with the probe and returns the per-marker
// replay lags of each standby.
func measureHop(b *testing.B, primary *pgcluster.Cluster, standbys []*pgcluster.Cluster, d time.Duration) [][]time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	samples := make([][]lsnSample, len(standbys))
	for i, sb := range standbys {
		wg.Add(1)
		go func() {
			defer wg.Done()
			samples[i] = pollReplay(ctx, sb)
		}()
	}
	type marker struct {
		at  time.Time
		lsn uint64
	}
	var markers []marker
	load := make(chan error, 1)
	// A rate-limited load: a saturated 2-core machine measures the CPU
	// scheduler, not the relay.
	go func() { load <- primary.Pgbench(context.Background(), 2, d, "-R", "400") }()
	pconn, err := pgx.Connect(ctx, primary.ConnString())
	if err != nil {
		b.Fatal(err)
	}
	defer pconn.Close(context.Background())
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		// Replay cannot happen before the commit is issued: measure from
		// here (includes the primary's commit time, the same for all).
		at := time.Now()
		var lsn string
		if err := pconn.QueryRow(ctx, "WITH i AS (INSERT INTO probe VALUES (now())) SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn); err != nil {
			b.Fatal(err)
		}
		v, _ := pgcluster.ParseLSN(lsn)
		markers = append(markers, marker{at, v})
		time.Sleep(20 * time.Millisecond)
	}
	if err := <-load; err != nil {
		b.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	cancel()
	wg.Wait()
	out := make([][]time.Duration, len(standbys))
	for i, s := range samples {
		j := 0
		for _, m := range markers {
			for j < len(s) && s[j].lsn < m.lsn {
				j++
			}
			if j == len(s) {
				break
			}
			out[i] = append(out[i], max(0, s[j].at.Sub(m.at)))
		}
	}
	return out
}

// pollReplay records the standby's replay LSN about every 0.3 ms.
func pollReplay(ctx context.Context, sb *pgcluster.Cluster) []lsnSample {
	conn, err := pgconn.Connect(ctx, sb.ConnString())
	if err != nil {
		return nil
	}
	defer conn.Close(context.Background())
	var out []lsnSample
	for ctx.Err() == nil {
		res, err := conn.Exec(ctx, "SELECT pg_last_wal_replay_lsn()").ReadAll()
		if err != nil || len(res) == 0 || len(res[0].Rows) == 0 {
			continue
		}
		v, err := pgcluster.ParseLSN(string(res[0].Rows[0][0]))
		if err == nil {
			out = append(out, lsnSample{time.Now(), v})
		}
		time.Sleep(200 * time.Microsecond)
	}
	return out
}

// BenchmarkRelayCPU compares CPU per delivered MB: N consumers streaming
// straight from the primary (CPU of its walsender processes) against the
// same N streaming through a relay (CPU of the relay process), with the
// same WAL volume, in one run.
//
//	go test -run '^$' -bench RelayCPU -benchtime 1x ./e2e/
func BenchmarkRelayCPU(b *testing.B) {
	for _, n := range []int{10, 50} {
		b.Run(fmt.Sprintf("consumers=%d", n), func(b *testing.B) { benchRelayCPU(b, n) })
	}
}

func benchRelayCPU(b *testing.B, consumers int) {
	requirePG(b)
	primary := newPrimary(b, "primary", map[string]string{"max_wal_senders": "60", "max_wal_size": "2GB", "max_connections": "100"})
	relay := startRelay(b, "r1", primary.ReplicationConnString(), "--log-level", "info")
	ctx := context.Background()
	if err := primary.Exec(ctx, "CREATE TABLE filler(id int, pad text)"); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		directCPU, directMB := cpuRun(b, primary, consumers, primary.Port, func() []int { return walsenderPIDs(b, primary) })
		relayPID := relay.cmd.Process.Pid
		target, _ := primary.CurrentLSN(ctx)
		waitRelayDurable(b, relay, target, time.Minute)
		if p := os.Getenv("WALRELAY_PROFILE"); p != "" {
			go saveProfile(b, relay, p)
		}
		feeding := walsenderPIDs(b, primary, relay.ID) // the relay's walsender alone
		feed0 := cpuOf(feeding)
		relayCPU, relayMB := cpuRun(b, primary, consumers, relay.Port(), func() []int { return []int{relayPID} })
		feedCPU := cpuOf(feeding) - feed0
		dPer := directCPU.Seconds() * 1000 / directMB
		rPer := relayCPU.Seconds() * 1000 / relayMB
		b.ReportMetric(feedCPU.Seconds()*1000/relayMB, "feed-walsender-ms/MB")
		b.Logf("the primary's walsender feeding the relay: %.0f ms (%.3f ms per delivered MB)", feedCPU.Seconds()*1000, feedCPU.Seconds()*1000/relayMB)
		logMetrics(b, relay, "walrelay_store_fsync_seconds_count", "walrelay_upstream_received_bytes_total")
		b.ReportMetric(dPer, "direct-cpu-ms/MB")
		b.ReportMetric(rPer, "relay-cpu-ms/MB")
		b.ReportMetric(rPer/dPer, "relay/direct")
		b.Logf("%d consumers: primary walsenders %.0f ms CPU for %.0f MB delivered (%.3f ms/MB); relay %.0f ms for %.0f MB (%.3f ms/MB); ratio %.2f",
			consumers, directCPU.Seconds()*1000, directMB, dPer, relayCPU.Seconds()*1000, relayMB, rPer, rPer/dPer)
	}
}

// cpuRun connects n discarding consumers to port, writes about 128 MB of
// WAL on the primary, waits until every consumer has it, and returns the
// CPU time the processes from pids() used and the MB delivered in total.
func cpuRun(b *testing.B, primary *pgcluster.Cluster, n, port int, pids func() []int) (time.Duration, float64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start, err := primary.CurrentLSN(ctx)
	if err != nil {
		b.Fatal(err)
	}
	start = start / (16 << 20) * (16 << 20)
	got := make([]uint64, n)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for i := 0; i < n; i++ {
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable replication=true", port))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(context.Background())
		wg.Add(1)
		go func() {
			defer wg.Done()
			discard(ctx, conn, start, func(end uint64) { mu.Lock(); got[i] = end; mu.Unlock() })
		}()
	}
	time.Sleep(500 * time.Millisecond)
	before := cpuOf(pids())
	if err := primary.Exec(ctx, "INSERT INTO filler SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 600000) g"); err != nil {
		b.Fatal(err)
	}
	target, _ := primary.CurrentLSN(ctx)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		mu.Lock()
		done := true
		for _, g := range got {
			done = done && g >= target
		}
		mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("consumers did not reach %s", pgcluster.FormatLSN(target))
		}
		time.Sleep(20 * time.Millisecond)
	}
	used := cpuOf(pids()) - before
	cancel()
	wg.Wait()
	return used, float64(target-start) * float64(n) / (1 << 20)
}

// discard streams from start and reports the end of what it received.
func discard(ctx context.Context, conn *pgconn.PgConn, start uint64, progress func(uint64)) {
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: fmt.Sprintf("START_REPLICATION %s TIMELINE 1", pgcluster.FormatLSN(start))})
	fe.Flush()
	var buf []byte
	for ctx.Err() == nil {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			continue
		}
		switch cd.Data[0] {
		case 'w':
			x, err := walstream.ParseXLogData(cd.Data)
			if err == nil {
				progress(uint64(x.DataStart) + uint64(len(x.Data)))
			}
		case 'k':
			k, _ := walstream.ParseKeepalive(cd.Data)
			if k.ReplyRequested {
				buf = walstream.AppendStandbyStatus(buf[:0], walstream.StandbyStatus{SendTime: walstream.PGTime(time.Now())})
				fe.Send(&pgproto3.CopyData{Data: buf})
				fe.Flush()
			}
		}
	}
}

// walsenderPIDs lists the primary's walsenders, or only those of the
// clients named (application_name).
func walsenderPIDs(b *testing.B, c *pgcluster.Cluster, apps ...string) []int {
	conn, err := c.Connect(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), "SELECT pid FROM pg_stat_replication WHERE cardinality($1::text[]) = 0 OR application_name = ANY($1)", append([]string{}, apps...))
	if err != nil {
		b.Fatal(err)
	}
	var pids []int
	for rows.Next() {
		var p int
		rows.Scan(&p)
		pids = append(pids, p)
	}
	return pids
}

// cpuOf sums user+system CPU of the processes (Linux /proc).
func cpuOf(pids []int) time.Duration {
	var ticks int64
	for _, pid := range pids {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		u, _ := strconv.ParseInt(fields[11], 10, 64)
		st, _ := strconv.ParseInt(fields[12], 10, 64)
		ticks += u + st
	}
	return time.Duration(ticks) * (time.Second / 100) // USER_HZ
}

// saveProfile writes a 4 s CPU profile of the relay to path.
func saveProfile(b *testing.B, r *relayProc, path string) {
	saveProfileURL(b, "http://"+r.HTTP+"/debug/pprof/profile?seconds=4", path)
}

// saveProfileURL saves the profile a pprof URL answers to path.
func saveProfileURL(b *testing.B, url, path string) {
	resp, err := http.Get(url)
	if err != nil {
		b.Log(err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		b.Log(err)
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
}

// relayMetricLines fetches the relay's /metrics, a line each.
func relayMetricLines(b *testing.B, r *relayProc) []string {
	resp, err := http.Get("http://" + r.HTTP + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	return strings.Split(string(body), "\n")
}

// logMetrics logs the relay's metric lines with the given prefixes.
func logMetrics(b *testing.B, r *relayProc, prefixes ...string) {
	for _, l := range relayMetricLines(b, r) {
		for _, p := range prefixes {
			if strings.HasPrefix(l, p) {
				b.Log(l)
			}
		}
	}
}

// BenchmarkLinkCompression compares bytes on the wire for the same pgbench
// WAL on a zstd link and a plain link: relay A feeds relay B (zstd) and
// relay C (--compression off) in one run.
//
//	go test -run '^$' -bench LinkCompression -benchtime 1x ./e2e/
func BenchmarkLinkCompression(b *testing.B) {
	requirePG(b)
	primary := newPgbenchPrimary(b, 10)
	ctx := context.Background()
	// Start past the bulk load: measure the TPC-B run's WAL.
	if err := primary.Exec(ctx, "CHECKPOINT; SELECT pg_switch_wal()"); err != nil {
		b.Fatal(err)
	}
	a := startRelay(b, "a", primary.ReplicationConnString(), "--log-level", "info")
	zst := startRelay(b, "zst", a.Conninfo(), "--log-level", "info")
	plain := startRelay(b, "plain", a.Conninfo(), "--log-level", "info", "--compression", "off")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := primary.Pgbench(ctx, 4, 10*time.Second); err != nil {
			b.Fatal(err)
		}
		target, _ := primary.CurrentLSN(ctx)
		for _, r := range []*relayProc{zst, plain} {
			waitFor(b, time.Minute, "relay "+r.ID+" caught up", func() (bool, error) { return relayDurable(b, r) >= target, nil })
		}
		wire := func(r *relayProc) (float64, float64) {
			up, _ := r.Status(b)["upstream"].(map[string]any)
			raw, _ := up["received_bytes"].(float64)
			w, _ := up["received_wire_bytes"].(float64)
			return raw, w
		}
		zRaw, zWire := wire(zst)
		pRaw, pWire := wire(plain)
		b.ReportMetric(zWire/pWire, "wire-zstd/plain")
		b.ReportMetric(zRaw/zWire, "compression-x")
		b.Logf("pgbench WAL: plain link %.1f MB for %.1f MB of WAL, zstd link %.1f MB for %.1f MB: %.3f of the plain bytes (%.1fx)",
			pWire/(1<<20), pRaw/(1<<20), zWire/(1<<20), zRaw/(1<<20), zWire/pWire, zRaw/zWire)
	}
}

// histogram is a Prometheus histogram read from /metrics: cumulative counts
// by upper bound.
type histogram struct {
	bounds, counts []float64
	count          float64
}

// quantile is the upper bound of the bucket holding quantile q.
func (h histogram) quantile(q float64) float64 {
	for i, c := range h.counts {
		if c >= q*h.count {
			return h.bounds[i]
		}
	}
	return math.Inf(1)
}

// relayHistogram reads an unlabelled histogram from the relay's /metrics.
func relayHistogram(b *testing.B, r *relayProc, name string) histogram {
	var h histogram
	for _, l := range relayMetricLines(b, r) {
		if rest, ok := strings.CutPrefix(l, name+`_bucket{le="`); ok {
			le, v, _ := strings.Cut(rest, `"} `)
			bound, _ := strconv.ParseFloat(le, 64)
			c, _ := strconv.ParseFloat(v, 64)
			h.bounds, h.counts = append(h.bounds, bound), append(h.counts, c)
		}
		if v, ok := strings.CutPrefix(l, name+"_count "); ok {
			h.count, _ = strconv.ParseFloat(v, 64)
		}
	}
	return h
}

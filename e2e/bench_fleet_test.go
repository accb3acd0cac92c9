package e2e

import (
	"bufio"
	"context"
	"fmt"
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

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// BenchmarkFiftyStandbys feeds 50 real standbys under pgbench TPC-B (scale
// 10, 4 clients) first straight from the primary, then through two relays
// (half of the standbys on each), in one run, and reports for each way:
//
//   - the primary's CPU: user+system of all its server processes (the
//     postmaster, its live children, and through the postmaster's cutime
//     and cstime those that exited, pgbench's backends among them; the two
//     monitoring backends of this benchmark left out), and of its
//     walsenders alone, from the start of the load until every standby has
//     replayed its end;
//   - the WAL bytes its walsenders sent (sent_lsn advance summed over
//     pg_stat_replication) per byte of WAL written: about 50 direct, 2
//     through the relays;
//   - replay lag p50 and p99 over all standbys: the primary's flush LSN is
//     sampled every 10 ms and each standby's replay LSN about every 100 ms;
//     a sample behind the primary's latest known position lags by the time
//     since the primary first showed a position past it (so to within the
//     10 ms sampling), else by 0;
//   - pgbench's transactions per second;
//   - through the relays, each relay's CPU and peak RSS (VmHWM).
//
// Each way ends with an oracle: every standby must replay the primary's
// final flush LSN within 3 minutes, and the first, middle and last standby
// must hold the same pgbench tables as the primary.
//
//	go test -run '^$' -bench FiftyStandbys -benchtime 1x -timeout 60m ./e2e/
//
// WALRELAY_BENCH_STANDBYS sets the number of standbys (default 50),
// WALRELAY_FLEET_SECONDS the pgbench duration (default 15),
// WALRELAY_FLEET_RATE a fixed commit rate for both ways (pgbench -R; by
// default as fast as it goes, which on a small machine is as fast as 50
// standbys replaying leave room for, so the ways differ in WAL rate) and
// WALRELAY_BENCH_RELAY_ARGS extra arguments for the relays.
func BenchmarkFiftyStandbys(b *testing.B) {
	requirePG(b)
	ctx := context.Background()
	n := envPositive("WALRELAY_BENCH_STANDBYS", 50)
	if n < 2 {
		b.Fatalf("WALRELAY_BENCH_STANDBYS=%d: two relays need at least 2 standbys", n)
	}
	d := time.Duration(envPositive("WALRELAY_FLEET_SECONDS", 15)) * time.Second
	primary := newPrimary(b, "primary", map[string]string{
		"max_wal_senders": strconv.Itoa(n + 10), "max_replication_slots": "10",
		"max_connections": strconv.Itoa(n + 20), "max_wal_size": "2GB",
	})
	if err := primary.PgbenchInit(ctx, 10); err != nil {
		b.Fatal(err)
	}
	fleet := newStandbyFleet(b, primary, n)
	defer fleet.close()
	// The two halves share the standbys (and their connections) of fleet.
	halves := []*standbyFleet{
		{sbs: fleet.sbs[:n/2], conns: fleet.conns[:n/2]},
		{sbs: fleet.sbs[n/2:], conns: fleet.conns[n/2:]},
	}
	checked := []*pgcluster.Cluster{fleet.sbs[0]}
	for _, sb := range []*pgcluster.Cluster{fleet.sbs[n/2], fleet.sbs[n-1]} {
		if sb != checked[len(checked)-1] {
			checked = append(checked, sb)
		}
	}
	relayArgs := append([]string{"--log-level", "info"}, strings.Fields(os.Getenv("WALRELAY_BENCH_RELAY_ARGS"))...)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// The relays start after the direct run so that they take no CPU
		// from it.
		fleet.point(b, primary, primary.Port)
		direct := fleetRun(b, "direct", primary, fleet, checked, d, n, nil)

		var relays []*relayProc
		for j, id := range []string{"ra", "rb"} {
			if i > 0 {
				id += strconv.Itoa(i)
			}
			r := startRelay(b, id, primary.ReplicationConnString(), relayArgs...)
			halves[j].point(b, primary, r.Port())
			relays = append(relays, r)
		}
		relayed := fleetRun(b, "relayed", primary, fleet, checked, d, len(relays), relays)

		for _, w := range []struct {
			name string
			r    fleetResult
		}{{"direct", direct}, {"relayed", relayed}} {
			b.ReportMetric(ms(w.r.primaryCPU), w.name+"-primary-cpu-ms")
			b.ReportMetric(ms(w.r.walsenderCPU), w.name+"-walsender-cpu-ms")
			b.ReportMetric(w.r.sent/w.r.wal, w.name+"-bytes-per-wal-byte")
			b.ReportMetric(ms(percentile(w.r.lags, 50)), w.name+"-lag-p50-ms")
			b.ReportMetric(ms(percentile(w.r.lags, 99)), w.name+"-lag-p99-ms")
			b.ReportMetric(w.r.tps, w.name+"-tps")
		}
		var relaysCPU time.Duration
		var peak float64
		for j := range relays {
			relaysCPU += relayed.relayCPU[j]
			peak = max(peak, relayed.relayHWM[j])
		}
		b.ReportMetric(ms(relaysCPU), "relays-cpu-ms")
		b.ReportMetric(peak, "relay-rss-mb")
		b.Logf("%d standbys, pgbench c4 %s: direct: %s", n, d, direct)
		rs := make([]string, len(relays))
		for j, r := range relays {
			rs[j] = fmt.Sprintf("relay %s CPU %.0f ms, peak RSS %.0f MB", r.ID, ms(relayed.relayCPU[j]), relayed.relayHWM[j])
		}
		b.Logf("%d standbys, pgbench c4 %s: through 2 relays: %s; %s", n, d, relayed, strings.Join(rs, "; "))
		for _, r := range relays {
			h := relayHistogram(b, r, "walrelay_store_fsync_seconds")
			b.Logf("relay %s: fsync p50 <= %.2f ms, p99 <= %.2f ms, max <= %.1f ms (%d fsyncs)",
				r.ID, 1000*h.quantile(0.5), 1000*h.quantile(0.99), 1000*h.quantile(1), int(h.count))
		}

		fleet.point(b, primary, primary.Port) // release the relays before they stop
		for _, r := range relays {
			r.stop(b)
		}
		dropInactiveSlots(b, primary, relays)
	}
}

// envPositive is the positive integer in the environment variable name, or
// def.
func envPositive(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// fleetResult is one way's figures.
type fleetResult struct {
	window       time.Duration   // wall time the CPU figures cover
	primaryCPU   time.Duration   // all of the primary's server processes
	walsenderCPU time.Duration   // its walsenders
	senders      int             // how many walsenders
	sent, wal    float64         // bytes the walsenders sent; bytes of WAL written
	lags         []time.Duration // one per standby sample
	worstAt      time.Duration   // when the largest lag was seen, since the load started
	tps          float64
	relayCPU     []time.Duration
	relayHWM     []float64 // MB
}

func (r fleetResult) String() string {
	return fmt.Sprintf("%.0f tps; primary CPU %.0f ms over %.1f s (%.2f cores), its %d walsenders %.0f ms; "+
		"walsenders sent %.1f MB for %.1f MB of WAL (%.2f bytes per WAL byte); replay lag p50 %.1f ms p99 %.1f ms max %.1f ms at %.1f s (%d samples)",
		r.tps, ms(r.primaryCPU), r.window.Seconds(), r.primaryCPU.Seconds()/r.window.Seconds(), r.senders, ms(r.walsenderCPU),
		r.sent/(1<<20), r.wal/(1<<20), r.sent/r.wal, ms(percentile(r.lags, 50)), ms(percentile(r.lags, 99)), ms(percentile(r.lags, 100)), r.worstAt.Seconds(), len(r.lags))
}

// fleetRun runs pgbench for d from a checkpoint once every standby of
// fleet is caught up and the primary has senders walsenders, samples
// replay lag meanwhile, waits until every standby has replayed the end,
// checks the tables of checked against the primary's, and returns the
// figures.
func fleetRun(b *testing.B, way string, primary *pgcluster.Cluster, fleet *standbyFleet, checked []*pgcluster.Cluster,
	d time.Duration, senders int, relays []*relayProc) fleetResult {
	ctx := context.Background()
	// The benchmark's own queries on the primary go to another database
	// than pgbench's, so that pg_stat_database counts pgbench's commits
	// only.
	mon := connectOtherDB(b, primary)
	defer mon.Close(ctx)
	waitFor(b, time.Minute, fmt.Sprintf("%d walsenders on the primary", senders), func() (bool, error) {
		var c int
		err := mon.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication").Scan(&c)
		return c == senders, err
	})
	// Each run starts at a checkpoint, so that each writes about as many
	// full-page images per commit as the other.
	if _, err := mon.Exec(ctx, "CHECKPOINT"); err != nil {
		b.Fatal(err)
	}
	start := flushLSN(b, mon)
	fleet.waitFor(b, start)

	var pids []int32
	var sentAt []string
	rows, err := mon.Query(ctx, "SELECT pid, sent_lsn::text FROM pg_stat_replication")
	if err != nil {
		b.Fatal(err)
	}
	for rows.Next() {
		var pid int32
		var lsn string
		if err := rows.Scan(&pid, &lsn); err != nil {
			b.Fatal(err)
		}
		pids, sentAt = append(pids, pid), append(sentAt, lsn)
	}
	if err := rows.Err(); err != nil {
		b.Fatal(err)
	}
	if len(pids) != senders {
		b.Fatalf("%s: %d walsenders on the primary, want %d", way, len(pids), senders)
	}
	wsPIDs := make([]int, len(pids))
	for i, p := range pids {
		wsPIDs[i] = int(p)
	}

	probe := newLagProbe(b, primary, fleet)
	defer probe.close()
	exclude := map[int]bool{backendPID(b, mon): true, backendPID(b, probe.primary): true}
	postmaster := postmasterPID(b, primary)
	began := time.Now()
	primary0, ws0 := primaryCPU(postmaster, exclude), cpuOf(wsPIDs)
	relay0 := make([]time.Duration, len(relays))
	for i, r := range relays {
		relay0[i] = cpuOf([]int{r.cmd.Process.Pid})
	}
	commits0 := xactCommits(b, mon)

	probe.start()
	var rate []string
	if r := envPositive("WALRELAY_FLEET_RATE", 0); r > 0 {
		rate = []string{"-R", strconv.Itoa(r)}
	}
	loadErr := primary.Pgbench(ctx, 4, d, rate...)
	lags, worstAt, probeErr := probe.stop()
	if loadErr != nil {
		b.Fatal(loadErr)
	}
	if probeErr != nil {
		b.Fatalf("%s: sampling replay lag: %v", way, probeErr)
	}
	end := flushLSN(b, mon)
	waitAllReplayed(b, way, fleet, end, 3*time.Minute)
	// pgbench's backends leave pg_stat_activity once they have flushed
	// their statistics; the postmaster then reaps them into its cutime.
	waitFor(b, time.Minute, "pgbench's backends gone", func() (bool, error) {
		var c int
		err := mon.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'").Scan(&c)
		return c == 0, err
	})

	r := fleetResult{
		primaryCPU:   primaryCPU(postmaster, exclude) - primary0,
		walsenderCPU: cpuOf(wsPIDs) - ws0,
		senders:      senders,
		wal:          float64(end - start),
		lags:         lags,
		worstAt:      worstAt,
	}
	for i, rp := range relays {
		r.relayCPU = append(r.relayCPU, cpuOf([]int{rp.cmd.Process.Pid})-relay0[i])
		r.relayHWM = append(r.relayHWM, procStatusMB(rp.cmd.Process.Pid, "VmHWM"))
	}
	r.window = time.Since(began)
	r.tps = float64(xactCommits(b, mon)-commits0) / d.Seconds()
	var same int
	if err := mon.QueryRow(ctx, `SELECT count(*), coalesce(sum(pg_wal_lsn_diff(r.sent_lsn, s.lsn::pg_lsn)), 0)::float8
		FROM pg_stat_replication r JOIN unnest($1::int4[], $2::text[]) AS s(pid, lsn) ON r.pid = s.pid`,
		pids, sentAt).Scan(&same, &r.sent); err != nil {
		b.Fatal(err)
	}
	if same != senders {
		// One reconnected: what its first walsender sent is lost.
		b.Logf("%s: only %d of the %d walsenders lasted the run: sent bytes undercounted", way, same, senders)
	}

	cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := primary.CompareTables(cctx, pgcluster.PgbenchTables, checked...); err != nil {
		b.Fatalf("%s: standbys differ from the primary: %v", way, err)
	}
	return r
}

// connectOtherDB connects to the primary's template1 database.
func connectOtherDB(b *testing.B, c *pgcluster.Cluster) *pgx.Conn {
	conn, err := pgx.Connect(context.Background(), fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=template1 sslmode=disable", c.Port))
	if err != nil {
		b.Fatal(err)
	}
	return conn
}

func backendPID(b *testing.B, conn *pgx.Conn) int {
	var pid int
	if err := conn.QueryRow(context.Background(), "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		b.Fatal(err)
	}
	return pid
}

func flushLSN(b *testing.B, conn *pgx.Conn) uint64 {
	s, err := queryLSN(conn.PgConn(), "pg_current_wal_flush_lsn()")
	if err != nil {
		b.Fatal(err)
	}
	return s.lsn
}

func xactCommits(b *testing.B, conn *pgx.Conn) int64 {
	var c int64
	if err := conn.QueryRow(context.Background(), "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'").Scan(&c); err != nil {
		b.Fatal(err)
	}
	return c
}

// queryLSN reads one LSN-valued expression (such as
// "pg_last_wal_replay_lsn()") over the simple protocol, with the server's
// clock_timestamp() as the sample's time: when the server read it, not when
// the probe got the answer, which on a busy machine can be tens of
// milliseconds later and would blur every lag measured from it.
func queryLSN(conn *pgconn.PgConn, expr string) (lsnSample, error) {
	sql := "SELECT " + expr + ", (extract(epoch FROM clock_timestamp()) * 1000000)::int8"
	res, err := conn.Exec(context.Background(), sql).ReadAll()
	if err != nil {
		return lsnSample{}, err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 || len(res[0].Rows[0]) != 2 || res[0].Rows[0][0] == nil {
		return lsnSample{}, fmt.Errorf("%s: no LSN", sql)
	}
	lsn, err := pgcluster.ParseLSN(string(res[0].Rows[0][0]))
	if err != nil {
		return lsnSample{}, err
	}
	us, err := strconv.ParseInt(string(res[0].Rows[0][1]), 10, 64)
	if err != nil {
		return lsnSample{}, fmt.Errorf("%s: server time: %w", sql, err)
	}
	return lsnSample{at: time.UnixMicro(us), lsn: lsn}, nil
}

// postmasterPID is the first line of the data directory's postmaster.pid.
func postmasterPID(b *testing.B, c *pgcluster.Cluster) int {
	pid, err := readPostmasterPID(c.DataDir)
	if err != nil {
		b.Fatalf("%s: %v", c.Name, err)
	}
	return pid
}

// readPostmasterPID reads the PID in dataDir's postmaster.pid.
func readPostmasterPID(dataDir string) (int, error) {
	data, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0, fmt.Errorf("postmaster.pid: %w", err)
	}
	return pid, nil
}

// procStat reads a process's parent, its own user+system CPU and that of
// its waited-for children from /proc/PID/stat.
func procStat(pid int) (ppid int, own, children time.Duration, ok bool) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, 0, 0, false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0, 0, 0, false
	}
	f := strings.Fields(s[i+2:]) // f[0] is field 3, state
	if len(f) < 15 {
		return 0, 0, 0, false
	}
	num := func(k int) int64 { v, _ := strconv.ParseInt(f[k], 10, 64); return v }
	tick := time.Second / 100 // USER_HZ
	return int(num(1)), time.Duration(num(11)+num(12)) * tick, time.Duration(num(13)+num(14)) * tick, true
}

// primaryCPU is the user+system CPU the postmaster and its children used
// so far: the postmaster's own and that of its reaped children (cutime,
// cstime) plus that of its live children except those in exclude. Taken
// before and after, the difference covers the processes that started or
// exited between.
func primaryCPU(postmaster int, exclude map[int]bool) time.Duration {
	_, own, reaped, _ := procStat(postmaster)
	total := own + reaped
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == postmaster || exclude[pid] {
			continue
		}
		if ppid, own, _, ok := procStat(pid); ok && ppid == postmaster {
			total += own
		}
	}
	return total
}

// procStatusMB reads a kB field (VmHWM, VmRSS) of /proc/PID/status in MB.
func procStatusMB(pid int, field string) float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

// waitAllReplayed waits until every standby has replayed lsn, failing
// after timeout with the positions of those behind.
func waitAllReplayed(b *testing.B, way string, fleet *standbyFleet, lsn uint64, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	behind := make([]int, len(fleet.sbs))
	for i := range behind {
		behind[i] = i
	}
	at := make([]uint64, len(fleet.sbs))
	for {
		var still []int
		for _, i := range behind {
			s, err := queryLSN(fleet.conns[i].PgConn(), "pg_last_wal_replay_lsn()")
			if err == nil {
				at[i] = s.lsn
			}
			if err != nil || s.lsn < lsn {
				still = append(still, i)
			}
		}
		behind = still
		if len(behind) == 0 {
			return
		}
		if time.Now().After(deadline) {
			var names []string
			for _, i := range behind {
				names = append(names, fleet.sbs[i].Name+" at "+pgcluster.FormatLSN(at[i]))
			}
			b.Fatalf("%s: after %s, %d standbys have not replayed %s: %s", way, timeout, len(behind), pgcluster.FormatLSN(lsn), strings.Join(names, ", "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lagProbe samples the primary's flush LSN every 10 ms and every
// standby's replay LSN about every 100 ms, over the standbys'
// connections, spread over a few goroutines.
type lagProbe struct {
	primary *pgx.Conn
	fleet   *standbyFleet
	done    chan struct{}
	wg      sync.WaitGroup

	history []lsnSample   // the primary's; written by one goroutine
	samples [][]lsnSample // the standbys', one slice per goroutine
	errMu   sync.Mutex
	err     error
}

const (
	primaryEvery = 10 * time.Millisecond
	standbyEvery = 100 * time.Millisecond
	lagPollers   = 4
)

func newLagProbe(b *testing.B, primary *pgcluster.Cluster, fleet *standbyFleet) *lagProbe {
	return &lagProbe{primary: connectOtherDB(b, primary), fleet: fleet, done: make(chan struct{})}
}

func (p *lagProbe) fail(err error) {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

func (p *lagProbe) start() {
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(primaryEvery)
		defer t.Stop()
		for {
			s, err := queryLSN(p.primary.PgConn(), "pg_current_wal_flush_lsn()")
			if err != nil {
				p.fail(fmt.Errorf("primary: %w", err))
				return
			}
			p.history = append(p.history, s)
			select {
			case <-p.done:
				return
			case <-t.C:
			}
		}
	}()
	g := min(lagPollers, len(p.fleet.sbs))
	p.samples = make([][]lsnSample, g)
	for w := 0; w < g; w++ {
		var mine []int
		for i := w; i < len(p.fleet.sbs); i += g {
			mine = append(mine, i)
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			// One standby per tick: each is polled every standbyEvery,
			// the polls spread evenly over it.
			t := time.NewTicker(standbyEvery / time.Duration(len(mine)))
			defer t.Stop()
			for j := 0; ; j++ {
				select {
				case <-p.done:
					return
				case <-t.C:
				}
				i := mine[j%len(mine)]
				s, err := queryLSN(p.fleet.conns[i].PgConn(), "pg_last_wal_replay_lsn()")
				if err != nil {
					p.fail(fmt.Errorf("%s: %w", p.fleet.sbs[i].Name, err))
					return
				}
				p.samples[w] = append(p.samples[w], s)
			}
		}()
	}
}

// stop ends the sampling and returns the lag of every standby sample and
// when the largest was seen, since the first sample of the primary.
func (p *lagProbe) stop() ([]time.Duration, time.Duration, error) {
	close(p.done)
	p.wg.Wait()
	if p.err != nil || len(p.history) == 0 {
		return nil, 0, p.err
	}
	var all []lsnSample
	for _, s := range p.samples {
		all = append(all, s...)
	}
	lags, at := replayLags(p.history, all)
	if len(lags) == 0 {
		return nil, 0, nil
	}
	var worst time.Duration
	var worstAt time.Time
	for i, l := range lags {
		if i == 0 || l > worst {
			worst, worstAt = l, at[i]
		}
	}
	return lags, worstAt.Sub(p.history[0].at), nil
}

func (p *lagProbe) close() { p.primary.Close(context.Background()) }

// replayLags gives the lag of each standby sample against the primary's
// history (in time order, positions never decreasing): 0 if the standby
// had replayed the primary's latest position known at the sample's time,
// else the time since the history first showed a position past the
// standby's, when the first byte it had not replayed was known written.
// Samples older than the history are left out; at is the time of each
// sample kept.
func replayLags(history, samples []lsnSample) (lags []time.Duration, at []time.Time) {
	for _, s := range samples {
		k := sort.Search(len(history), func(i int) bool { return history[i].at.After(s.at) }) - 1
		if k < 0 {
			continue
		}
		lag := time.Duration(0)
		if s.lsn < history[k].lsn {
			first := sort.Search(k+1, func(i int) bool { return history[i].lsn > s.lsn })
			lag = s.at.Sub(history[first].at)
		}
		lags, at = append(lags, lag), append(at, s.at)
	}
	return lags, at
}

// dropInactiveSlots drops the relays' slots on the primary once their
// walsenders are gone.
func dropInactiveSlots(b *testing.B, primary *pgcluster.Cluster, relays []*relayProc) {
	ctx := context.Background()
	var slots []string
	for _, r := range relays {
		slots = append(slots, "walrelay_"+r.ID)
	}
	conn := connectOtherDB(b, primary)
	defer conn.Close(ctx)
	waitFor(b, time.Minute, "relay slots dropped", func() (bool, error) {
		if _, err := conn.Exec(ctx, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = ANY($1) AND NOT active", slots); err != nil {
			return false, err
		}
		var left int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = ANY($1)", slots).Scan(&left)
		return left == 0, err
	})
}

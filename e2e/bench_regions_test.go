package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// BenchmarkCrossRegion feeds standbys in two distant regions, B and C, from
// a primary in region A, over links shaped like links between regions: 25 ms
// one way and 20 MiB/s in each direction, shared by every connection
// crossing the link (one shaping proxy per region). Each of B and C holds 4
// standbys (16 MB of shared buffers each). Two ways of feeding them are
// measured in one run, one after the other, with the same standbys
// re-pointed:
//
//   - way=direct: every standby streams straight from the primary across
//     its region's link;
//   - way=tree: relay ra next to the primary feeds one relay per region (rb,
//     rc) across the region's link, compressed (zstd, relay to relay); the
//     region's standbys stream from their regional relay, locally.
//
// Each way runs three loads, each from a CHECKPOINT with every standby
// caught up: pgbench TPC-B (scale 10, 4 clients, 30 s), a bulk INSERT ...
// SELECT of about 256 MiB of WAL in rows of hex digits (zstd halves it),
// which the primary writes faster than a link carries, and TPC-B again
// paced at 200 commits per second (pgbench -R), which leaves the machine
// CPU to spare and the direct way's links room, so that the two ways' lags
// compare what streaming across the link costs with and without the
// relays. For each way and load:
//
//   - cross-region bytes per byte of WAL: both links' bytes, both
//     directions, from the start of the load until every standby has
//     replayed all WAL written by then (what autovacuum writes after the
//     bulk load crosses the links too), over that WAL (the primary's flush
//     LSN before and after);
//   - replay lag p50/p99 of the standbys of B and of C: the primary's flush
//     LSN is sampled every 5 ms and each standby's replay LSN every 50 ms; a
//     sample lags by the time since the primary first showed a position past
//     it (replayLags), which reads up to 5 ms short; the same for each
//     relay's durable end;
//   - pgbench's transactions per second;
//   - how far behind the standbys were at most and when the load ended
//     (MiB), how fast the furthest one was still falling behind over the
//     load's second half (MiB/s: one that cannot keep up falls behind
//     without bound), and how long after the load every standby took to
//     replay its end;
//   - CPU by process group, the machine's idle share, the relays' fsyncs
//     and the times a standby's walreceiver had to start again.
//
// Then, with the tree in place:
//
//   - backlog: the regional relays are stopped for a bulk load and started
//     again one at a time; each fetches what it missed from ra as fast as it
//     can, which shows how much of the link a relay uses;
//
//   - sync: pgbench TPC-B for half as long with the primary's
//     synchronous_standby_names set to nothing, to ra and to rb: commit rate
//     and average latency (4 clients × duration / commits, as pgbench
//     computes it). rb streams from ra, so the primary does not see it: the
//     benchmark shows a commit waiting, then restarts rb streaming straight
//     from the primary across a link like B's, which is how a remote relay
//     can be a synchronous standby.
//
// Run it alone with
//
//	go test -run '^$' -bench CrossRegion -benchtime 1x -timeout 60m ./e2e/
//
// WALRELAY_REGION_SECONDS sets the TPC-B durations (default 30),
// WALRELAY_REGION_PACED_TPS the paced load's rate (default 200),
// WALRELAY_REGION_INIT_ZERO=on keeps wal_init_zero on in the primary and
// the standbys (the benchmark turns it off, see below),
// WALRELAY_REGION_LOADS which loads run (names, comma-separated: tpcb, bulk,
// tpcb-200tps; default all), WALRELAY_REGION_TRACE=DIR writes every lag
// sample of each run to a CSV file there,
// WALRELAY_REGION_BULK_MB the bulk load's WAL in MiB (default 256),
// WALRELAY_BENCH_RELAY_ARGS extra arguments for the relays, and
// WALRELAY_PROFILE=FILE saves 10 s CPU profiles of the relays from the start
// of each load (NAME in FILE becomes the relay and the load).
func BenchmarkCrossRegion(b *testing.B) {
	requirePG(b)
	ctx := context.Background()
	d := time.Duration(envPositive("WALRELAY_REGION_SECONDS", 30)) * time.Second
	conf := map[string]string{
		// The direct way's standbys stream without slots and may fall far
		// behind: keep every byte they may still ask for.
		"max_wal_size": "4GB", "wal_keep_size": "4GB", "checkpoint_timeout": "30min",
		// Both ways must see the same load. Autovacuum struck whichever
		// run crossed its thresholds: once 30 MiB more WAL at about
		// 10 MiB/s for 3 s in the tree's paced TPC-B, whose p99 went from
		// tens of ms to a second. The TPC-B loads vacuum their tables
		// before each run instead.
		"autovacuum": "off",
	}
	if os.Getenv("WALRELAY_REGION_INIT_ZERO") != "on" {
		// wal_keep_size keeps every old segment, so the primary creates
		// each new one and zero-fills it while commits wait: its flush
		// position stood still about 100 ms at each segment switch, then
		// burst (a primary in a steady state recycles old segments).
		conf["wal_init_zero"] = "off"
	}
	primary := newPrimary(b, "primary", conf)
	if err := primary.PgbenchInit(ctx, 10); err != nil {
		b.Fatal(err)
	}
	// Fresh from pgbench -i, every row fills its page and TPC-B's first
	// updates touch fewer pages than later ones: the direct way, measured
	// first, wrote 7,389 full-page images in its paced run and the tree
	// 10,741 (58.6 against 84.0 MiB of WAL). A run before the standbys
	// exist brings the tables to the state later runs see.
	if err := primary.Pgbench(ctx, 4, d, "-R", strconv.Itoa(envPositive("WALRELAY_REGION_PACED_TPS", 200))); err != nil {
		b.Fatal(err)
	}
	if err := vacuumPgbench(primary)(ctx); err != nil {
		b.Fatal(err)
	}
	if err := primary.Exec(ctx, "CREATE TABLE bulk(id int, v text)"); err != nil {
		b.Fatal(err)
	}
	per := envPositive("WALRELAY_REGION_STANDBYS", regionStandbys)
	fleet := newStandbyFleet(b, primary, 2*per)
	defer fleet.close()
	if os.Getenv("WALRELAY_REGION_INIT_ZERO") != "on" {
		// A standby's walreceiver zero-fills each new WAL segment file
		// (wal_init_zero) before it receives more, and all the fleet's
		// standbys start a segment at the same moment: here, on 2 shared
		// cores, that stalled every one of them for about a second at
		// each segment switch, in both ways alike, and was nearly all of
		// their lag p99 (1.0-2.0 s against 58 ms without it, paced
		// TPC-B, direct). Standbys on machines of their own do not queue
		// behind each other's zero-fill.
		for _, c := range fleet.conns {
			if _, err := c.Exec(ctx, "ALTER SYSTEM SET wal_init_zero = off"); err != nil {
				b.Fatal(err)
			}
			if _, err := c.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
				b.Fatal(err)
			}
		}
	}
	regions := []region{
		{name: "B", fleet: &standbyFleet{sbs: fleet.sbs[:per], conns: fleet.conns[:per]}},
		{name: "C", fleet: &standbyFleet{sbs: fleet.sbs[per:], conns: fleet.conns[per:]}},
	}
	bulk := bulkLoad(primary, envPositive("WALRELAY_REGION_BULK_MB", 256))
	loads := []regionLoad{tpcbLoad(primary, d), bulk, pacedLoad(primary, d, envPositive("WALRELAY_REGION_PACED_TPS", 200))}
	if only := os.Getenv("WALRELAY_REGION_LOADS"); only != "" {
		loads = slices.DeleteFunc(loads, func(l regionLoad) bool { return !slices.Contains(strings.Split(only, ","), l.name) })
		if len(loads) == 0 {
			b.Fatalf("WALRELAY_REGION_LOADS=%s names none of the loads", only)
		}
	}

	direct := regionWay{name: "direct"}
	ok := b.Run("way=direct", func(b *testing.B) {
		for _, r := range regions {
			l := newRegionLink(b, primary.Port)
			r.fleet.point(b, primary, l.Port())
			direct.links = append(direct.links, l)
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			direct.runs = direct.runs[:0]
			for _, ld := range loads {
				direct.runs = append(direct.runs, runRegions(b, primary, fleet, regions, direct, ld))
			}
		}
		reportWay(b, regions, direct)
	})
	if !ok {
		return
	}

	// The relays start after the direct way so that they take no CPU from
	// it, and live until the synchronous runs are done.
	tree := startTree(b, primary, regions)
	ra := tree.relays[0]
	ok = b.Run("way=tree", func(b *testing.B) {
		for j, r := range regions {
			r.fleet.point(b, primary, tree.remote[j].Port())
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			tree.runs = tree.runs[:0]
			for _, ld := range loads {
				tree.runs = append(tree.runs, runRegions(b, primary, fleet, regions, tree, ld))
			}
		}
		reportWay(b, regions, tree)
		if len(direct.runs) > 0 {
			compareWays(b, regions, direct, tree)
		}
		for _, r := range tree.relays {
			reportRelayHealth(b, r)
		}
	})
	ok = ok && b.Run("backlog", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			treeBacklog(b, primary, fleet, tree, bulk)
		}
	})
	ok = ok && b.Run("sync", func(b *testing.B) {
		for j, r := range regions {
			r.fleet.point(b, primary, tree.remote[j].Port())
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			syncFigures(b, primary, ra, tree.remote[0], d/2)
		}
	})
	if !ok {
		return
	}
	fleet.point(b, primary, primary.Port) // release the relays before they stop
	for _, r := range tree.relays {
		r.stop(b)
	}
	dropInactiveSlots(b, primary, tree.relays)
}

const (
	regionStandbys = 4                     // standbys in each of B and C (WALRELAY_REGION_STANDBYS)
	regionDelay    = 25 * time.Millisecond // one way, A to B and A to C
	regionRate     = 20 << 20              // bytes per second, each direction of a link
)

// startTree starts relay ra fed by the primary and, for each region, a
// link to ra and a relay fed across it, compressed.
func startTree(b *testing.B, primary *pgcluster.Cluster, regions []region) regionWay {
	args := append([]string{"--log-level", "info"}, strings.Fields(os.Getenv("WALRELAY_BENCH_RELAY_ARGS"))...)
	tree := regionWay{name: "tree"}
	ra := startRelay(b, "ra", primary.ReplicationConnString(), args...)
	for _, r := range regions {
		l := newRegionLink(b, ra.Port())
		rr := startRelay(b, "r"+strings.ToLower(r.name), linkConninfo(l), args...)
		waitFor(b, time.Minute, "relay "+rr.ID+" streaming compressed", func() (bool, error) {
			up, _ := rr.Status(b)["upstream"].(map[string]any)
			return up["compression"] == "zstd", nil
		})
		tree.links, tree.remote = append(tree.links, l), append(tree.remote, rr)
	}
	tree.relays = append([]*relayProc{ra}, tree.remote...)
	return tree
}

// region is a remote region's standbys.
type region struct {
	name  string
	fleet *standbyFleet
}

// regionWay is one way of feeding the regions: the links it crosses (one
// per region, in region order), the relays it runs (none for direct) and
// its runs, one per load.
type regionWay struct {
	name   string
	links  []*faultProxy
	relays []*relayProc // every relay of the way
	remote []*relayProc // the regional relays, in region order
	runs   []regionRun
}

// newRegionLink is a link from a remote region to the local port: a
// shaping proxy with the regions' delay and rate.
func newRegionLink(b *testing.B, port int) *faultProxy {
	l := startFaultProxy(b, fmt.Sprintf("127.0.0.1:%d", port))
	l.SetLatency(regionDelay)
	l.SetRate(regionRate)
	return l
}

func linkConninfo(l *faultProxy) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable", l.Port())
}

// regionLoad is a load on the primary: prepare runs before the run's
// checkpoint, run is the load measured.
type regionLoad struct {
	name    string
	prepare func(ctx context.Context) error
	run     func(ctx context.Context) error
	commits bool // whether its commit rate means anything
}

func tpcbLoad(primary *pgcluster.Cluster, d time.Duration) regionLoad {
	return regionLoad{
		name:    "tpcb",
		prepare: vacuumPgbench(primary),
		run:     func(ctx context.Context) error { return primary.Pgbench(ctx, 4, d) },
		commits: true,
	}
}

// walFPIs is how many full-page images the server has written to WAL
// (pg_stat_wal, PostgreSQL 14 and later; 0 before).
func walFPIs(b *testing.B, conn *pgx.Conn) int64 {
	var n int64
	err := conn.QueryRow(context.Background(), "SELECT wal_fpi FROM pg_stat_wal").Scan(&n)
	if err != nil && !strings.Contains(err.Error(), "pg_stat_wal") {
		b.Fatal(err)
	}
	return n
}

// vacuumPgbench vacuums pgbench's tables, so that each TPC-B run starts
// from the same state with autovacuum off (and the WAL it writes is behind
// the run's starting checkpoint).
func vacuumPgbench(primary *pgcluster.Cluster) func(context.Context) error {
	return func(ctx context.Context) error {
		return primary.Exec(ctx, "VACUUM "+strings.Join(pgcluster.PgbenchTables, ", "))
	}
}

// pacedLoad is TPC-B at a fixed commit rate (pgbench -R), low enough that
// the machine has CPU to spare and that the direct way's links are not
// full: both ways' lag is then what streaming across the link costs, not
// what a saturated machine or link does to it, and the difference between
// them is what the relays add.
func pacedLoad(primary *pgcluster.Cluster, d time.Duration, tps int) regionLoad {
	return regionLoad{
		name:    fmt.Sprintf("tpcb-%dtps", tps),
		prepare: vacuumPgbench(primary),
		run:     func(ctx context.Context) error { return primary.Pgbench(ctx, 4, d, "-R", strconv.Itoa(tps)) },
		commits: true,
	}
}

// bulkLoad inserts rows of an integer and 512 hex digits of SHA-512
// digests, about 580 bytes of WAL each, into an emptied table: one
// transaction of about mb MiB of WAL, which the zstd link shrinks about 1.9x
// (pgbench's WAL, about 11x).
func bulkLoad(primary *pgcluster.Cluster, mb int) regionLoad {
	rows := mb * (1 << 20) / 580
	return regionLoad{
		name:    "bulk",
		prepare: func(ctx context.Context) error { return primary.Exec(ctx, "TRUNCATE bulk") },
		run: func(ctx context.Context) error {
			return primary.Exec(ctx, fmt.Sprintf(`INSERT INTO bulk SELECT g, encode(sha512(int4send(g)) || sha512(int4send(-g))
				|| sha512(int4send(g # 12345678)) || sha512(int4send(g # 87654321)), 'hex') FROM generate_series(1, %d) g`, rows))
		},
	}
}

// regionRun is one load's figures for one way.
type regionRun struct {
	load     string
	wal      float64           // bytes of WAL the primary wrote
	written  float64           // bytes of WAL the load wrote (wal less what was written while the standbys caught up)
	crossed  float64           // bytes through the links, both directions
	took     time.Duration     // how long the load took
	settled  time.Duration     // from the start of the load until every standby had replayed its end
	rate     float64           // MiB/s through each link, on average, until settled
	tps      float64           // commits per second (TPC-B only)
	fpis     int64             // full-page images in the load's WAL (pg_stat_wal; 0 before PostgreSQL 14)
	lags     [][]time.Duration // per region: every sample of its standbys
	relays   []relayRun        // per relay of the way
	cpu      cpuUse            // from the start of the load until every standby had replayed its end
	behind   []float64         // per region: bytes the furthest standby was behind at the end of the load
	peak     []float64         // per region: the most bytes a standby was behind during the load
	growth   []float64         // per region: bytes/s the furthest-falling standby fell behind over the load's second half
	catchUp  []time.Duration   // per region: from the end of the load until all its standbys replayed it
	linkLate []time.Duration   // how late the links delivered each chunk downstream, beyond their delay (the rate's waits included)
	restarts int               // times a standby's walreceiver started streaming again
	why      string            // the first FATAL or ERROR line the standbys logged in the run
}

// runRegions runs one load from a checkpoint once every standby is caught
// up, samples replay lag meanwhile, waits until every standby has replayed
// its end, and returns the figures.
func runRegions(b *testing.B, primary *pgcluster.Cluster, fleet *standbyFleet, regions []region, way regionWay, ld regionLoad) regionRun {
	ctx := context.Background()
	name := way.name + " " + ld.name
	if err := ld.prepare(ctx); err != nil {
		b.Fatal(err)
	}
	// The benchmark's own queries go to another database than the load's,
	// so that pg_stat_database counts the load's commits only.
	mon := connectOtherDB(b, primary)
	defer mon.Close(ctx)
	if _, err := mon.Exec(ctx, "CHECKPOINT"); err != nil {
		b.Fatal(err)
	}
	start := flushLSN(b, mon)
	waitAllReplayed(b, name, fleet, start, 3*time.Minute)
	crossed0 := linkBytes(way.links)
	for _, l := range way.links {
		l.Late() // from the load on only
	}
	commits0 := xactCommits(b, mon)
	fpi0 := walFPIs(b, mon)
	probe := startRegionProbe(b, primary, fleet, way.relays)
	cpu0 := cpuNow(b, primary, fleet, way.relays)
	logs0 := standbyLogSizes(fleet)
	fsync0 := relayFsyncs(b, way.relays)
	relayCPU0 := relayCPUs(way.relays)
	began := time.Now()
	profiled := profileRelays(b, way.relays, ld.name)
	defer profiled.Wait()
	loadErr := ld.run(ctx)
	ended := time.Now()
	end := flushLSN(b, mon)
	commits := xactCommits(b, mon) - commits0
	fpis := walFPIs(b, mon) - fpi0
	history, samples, relaySamples, probeErr := probe.stop() // it shares the standbys' connections
	atEnd := replayPositions(b, fleet)
	if loadErr != nil {
		b.Fatalf("%s: %v", name, loadErr)
	}
	if probeErr != nil {
		b.Fatalf("%s: sampling replay lag: %v", name, probeErr)
	}
	if dir := os.Getenv("WALRELAY_REGION_TRACE"); dir != "" {
		traceLags(b, filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".csv"), began, history, samples, relaySamples)
	}
	caught := catchUp(b, name, fleet, end, ended, 5*time.Minute)
	settled, settledBytes := time.Since(began), linkBytes(way.links)-crossed0
	// WAL written while the standbys caught up crossed the links too:
	// count it on both sides.
	last := flushLSN(b, mon)
	waitAllReplayed(b, name, fleet, last, time.Minute)
	r := regionRun{
		load:    ld.name,
		wal:     float64(last - start),
		written: float64(end - start),
		crossed: float64(linkBytes(way.links) - crossed0),
		took:    ended.Sub(began),
		fpis:    fpis,
		settled: settled,
		rate:    mib(float64(settledBytes)) / float64(len(way.links)) / settled.Seconds(),
		cpu:     cpuNow(b, primary, fleet, way.relays).minus(cpu0),
	}
	for _, l := range way.links {
		r.linkLate = append(r.linkLate, l.Late()...)
	}
	r.restarts, r.why = walReceiverRestarts(fleet, logs0)
	if ld.commits {
		r.tps = float64(commits) / r.took.Seconds()
	}
	r.standbyFigures(regions, history, samples, atEnd, caught, end, began.Add(r.took/2))
	r.relayFigures(b, way.relays, history, relaySamples, relayCPU0, fsync0)
	return r
}

// traceLags writes every sample as a CSV row: seconds since the load began,
// what was sampled (primary, standby index sN or relay index rN), its LSN
// and, for standbys and relays, its lag in ms.
func traceLags(b *testing.B, path string, began time.Time, history []lsnSample, standbys, relays [][]lsnSample) {
	var sb strings.Builder
	sb.WriteString("t,who,lsn,lag_ms\n")
	for _, h := range history {
		fmt.Fprintf(&sb, "%.3f,primary,%d,\n", h.at.Sub(began).Seconds(), h.lsn)
	}
	for prefix, sets := range map[string][][]lsnSample{"s": standbys, "r": relays} {
		for i, set := range sets {
			for _, s := range set {
				if lags, at := replayLags(history, []lsnSample{s}); len(lags) == 1 {
					fmt.Fprintf(&sb, "%.3f,%s%d,%d,%.1f\n", at[0].Sub(began).Seconds(), prefix, i, s.lsn, ms(lags[0]))
				}
			}
		}
	}
	if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
		b.Fatal(err)
	}
}

// standbyFigures sets the per-region figures from the standbys' samples
// (in fleet order, which is region order), their replay positions when the
// load ended at end, and how long each took to catch up; the slope of
// falling behind is taken from half on.
func (r *regionRun) standbyFigures(regions []region, history []lsnSample, samples [][]lsnSample, atEnd []uint64, caught []time.Duration, end uint64, half time.Time) {
	k := 0
	for _, reg := range regions {
		var lags []time.Duration
		var behind, growth, peak float64
		var caughtUp time.Duration
		for range reg.fleet.sbs {
			l, _ := replayLags(history, samples[k])
			lags = append(lags, l...)
			behind = max(behind, float64(end-min(end, atEnd[k])))
			growth = max(growth, behindSlope(history, samples[k], half))
			for _, smp := range samples[k] {
				peak = max(peak, behindAt(history, smp))
			}
			caughtUp = max(caughtUp, caught[k])
			k++
		}
		r.lags, r.peak = append(r.lags, lags), append(r.peak, peak)
		r.behind, r.growth, r.catchUp = append(r.behind, behind), append(r.growth, growth), append(r.catchUp, caughtUp)
	}
}

// relayFigures sets each relay's lag, CPU and fsyncs in the run, from its
// samples and its CPU and fsyncs before it.
func (r *regionRun) relayFigures(b *testing.B, relays []*relayProc, history []lsnSample, samples [][]lsnSample, cpu0 []time.Duration, fsync0 []histogram) {
	cpu, fsync := relayCPUs(relays), relayFsyncs(b, relays)
	for j, s := range samples {
		l, _ := replayLags(history, s)
		r.relays = append(r.relays, relayRun{lags: l, cpu: cpu[j] - cpu0[j], fsync: fsync[j].minus(fsync0[j])})
	}
}

func relayCPUs(relays []*relayProc) []time.Duration {
	var out []time.Duration
	for _, r := range relays {
		out = append(out, cpuOf([]int{r.cmd.Process.Pid}))
	}
	return out
}

// relayRun is what one relay did in a run.
type relayRun struct {
	lags  []time.Duration // its durable end behind the primary's flush position
	cpu   time.Duration
	fsync histogram // its fsyncs in the run
}

func relayFsyncs(b *testing.B, relays []*relayProc) []histogram {
	var hs []histogram
	for _, r := range relays {
		hs = append(hs, relayHistogram(b, r, "walrelay_store_fsync_seconds"))
	}
	return hs
}

// minus is the histogram of the observations made since v was read.
func (h histogram) minus(v histogram) histogram {
	d := histogram{bounds: h.bounds, count: h.count - v.count}
	for i, c := range h.counts {
		if i < len(v.counts) {
			c -= v.counts[i]
		}
		d.counts = append(d.counts, c)
	}
	return d
}

// cpuUse is the user+system CPU of the processes of a run.
type cpuUse struct {
	primary  time.Duration // the primary's server processes
	standbys time.Duration // the standbys' server processes
	relays   time.Duration
	bench    time.Duration // this process: the link proxies and the probes
	idle     float64       // the machine's idle and iowait CPU time, all CPUs, in USER_HZ ticks
	total    float64       // the machine's CPU time, all CPUs, in ticks
}

func cpuNow(b *testing.B, primary *pgcluster.Cluster, fleet *standbyFleet, relays []*relayProc) cpuUse {
	u := cpuUse{primary: primaryCPU(postmasterPID(b, primary), nil), bench: cpuOf([]int{os.Getpid()})}
	u.idle, u.total = machineCPU()
	for _, sb := range fleet.sbs {
		u.standbys += primaryCPU(postmasterPID(b, sb), nil)
	}
	for _, r := range relays {
		u.relays += cpuOf([]int{r.cmd.Process.Pid})
	}
	return u
}

func (u cpuUse) minus(v cpuUse) cpuUse {
	return cpuUse{u.primary - v.primary, u.standbys - v.standbys, u.relays - v.relays, u.bench - v.bench, u.idle - v.idle, u.total - v.total}
}

// machineCPU reads the idle (idle and iowait) and total CPU time of the
// machine from /proc/stat.
func machineCPU() (idle, total float64) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseFloat(f, 64)
		if i < 8 { // user nice system idle iowait irq softirq steal; guest time is in user already
			total += v
		}
		if i == 3 || i == 4 {
			idle += v
		}
	}
	return idle, total
}

func (u cpuUse) String() string {
	return fmt.Sprintf("primary %.1f, standbys %.1f, relays %.1f, proxies and probes %.1f; machine idle %.0f%%",
		u.primary.Seconds(), u.standbys.Seconds(), u.relays.Seconds(), u.bench.Seconds(), 100*u.idle/max(u.total, 1))
}

// profileRelays saves a 10 s CPU profile of each relay, from now, when
// WALRELAY_PROFILE names a file (NAME in it becomes the relay's ID and
// what); the returned group ends when they are written.
func profileRelays(b *testing.B, relays []*relayProc, what string) *sync.WaitGroup {
	var wg sync.WaitGroup
	for _, r := range relays {
		if p := os.Getenv("WALRELAY_PROFILE"); p != "" {
			wg.Add(1)
			go func() {
				defer wg.Done()
				saveProfileFor(b, r, strings.ReplaceAll(p, "NAME", r.ID+"-"+what), 10*time.Second)
			}()
		}
		// Execution traces show where latency goes: go tool trace
		// -pprof=sched (waiting for a CPU), -pprof=sync, -pprof=syscall.
		if p := os.Getenv("WALRELAY_EXEC_TRACE"); p != "" {
			wg.Add(1)
			go func() {
				defer wg.Done()
				saveProfileURL(b, "http://"+r.HTTP+"/debug/pprof/trace?seconds=10", strings.ReplaceAll(p, "NAME", r.ID+"-"+what))
			}()
		}
	}
	return &wg
}

// standbyLogSizes is where each standby's server log ends now.
func standbyLogSizes(fleet *standbyFleet) []int64 {
	var sizes []int64
	for _, sb := range fleet.sbs {
		st, err := os.Stat(sb.LogFile)
		if err != nil {
			sizes = append(sizes, 0)
			continue
		}
		sizes = append(sizes, st.Size())
	}
	return sizes
}

// walReceiverRestarts counts the times the standbys' walreceivers started
// streaming since their logs had the given sizes, and gives the first
// FATAL or ERROR line they logged meanwhile.
func walReceiverRestarts(fleet *standbyFleet, since []int64) (n int, why string) {
	for i, sb := range fleet.sbs {
		data, _ := os.ReadFile(sb.LogFile)
		if since[i] <= int64(len(data)) {
			data = data[since[i]:]
		}
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "started streaming WAL") {
				n++
			}
			if why == "" && (strings.Contains(l, "FATAL:") || strings.Contains(l, "ERROR:")) {
				why = sb.Name + ": " + l[:min(len(l), 200)]
			}
		}
	}
	return n, why
}

// linkBytes sums the bytes through links, both directions.
func linkBytes(links []*faultProxy) int64 {
	var n int64
	for _, l := range links {
		to, from := l.Bytes()
		n += to + from
	}
	return n
}

// replayPositions reads every standby's replay LSN.
func replayPositions(b *testing.B, fleet *standbyFleet) []uint64 {
	out := make([]uint64, len(fleet.sbs))
	for i, c := range fleet.conns {
		s, err := queryLSN(c.PgConn(), "pg_last_wal_replay_lsn()")
		if err != nil {
			b.Fatalf("%s: %v", fleet.sbs[i].Name, err)
		}
		out[i] = s.lsn
	}
	return out
}

// catchUp polls every standby until each has replayed lsn and returns,
// for each, how long after since it first showed it; it fails after
// timeout with the positions of those behind.
func catchUp(b *testing.B, way string, fleet *standbyFleet, lsn uint64, since time.Time, timeout time.Duration) []time.Duration {
	took := make([]time.Duration, len(fleet.sbs))
	at := make([]uint64, len(fleet.sbs))
	left := len(fleet.sbs)
	for left > 0 {
		for i, c := range fleet.conns {
			if at[i] >= lsn {
				continue
			}
			s, err := queryLSN(c.PgConn(), "pg_last_wal_replay_lsn()")
			if err != nil {
				continue
			}
			if at[i] = s.lsn; s.lsn >= lsn {
				took[i] = s.at.Sub(since)
				left--
			}
		}
		if left > 0 && time.Since(since) > timeout {
			var behind []string
			for i, sb := range fleet.sbs {
				if at[i] < lsn {
					behind = append(behind, fmt.Sprintf("%s at %s (%.1f MiB behind)", sb.Name, pgcluster.FormatLSN(at[i]), mib(float64(lsn-at[i]))))
				}
			}
			b.Fatalf("%s: %s after the load, %d standbys have not replayed %s: %s", way, timeout, len(behind), pgcluster.FormatLSN(lsn), strings.Join(behind, ", "))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return took
}

// behindAt is how many bytes a standby's sample was behind the primary's
// latest flush position known at the sample's time.
func behindAt(history []lsnSample, s lsnSample) float64 {
	k := sort.Search(len(history), func(i int) bool { return history[i].at.After(s.at) }) - 1
	if k < 0 {
		return 0
	}
	return float64(history[k].lsn - min(history[k].lsn, s.lsn))
}

// behindSlope is how fast a standby fell behind the primary from since on:
// the least-squares slope, in bytes per second, of behindAt over its
// samples.
func behindSlope(history, samples []lsnSample, since time.Time) float64 {
	var n, sx, sy, sxx, sxy float64
	for _, s := range samples {
		if s.at.Before(since) {
			continue
		}
		x, y := s.at.Sub(since).Seconds(), behindAt(history, s)
		n, sx, sy, sxx, sxy = n+1, sx+x, sy+y, sxx+x*x, sxy+x*y
	}
	if n < 2 || n*sxx == sx*sx {
		return 0
	}
	return (n*sxy - sx*sy) / (n*sxx - sx*sx)
}

func mib(bytes float64) float64 { return bytes / (1 << 20) }

// regionProbe samples the primary's flush LSN every 5 ms, and every 50 ms
// each standby's replay LSN and each given relay's durable end.
type regionProbe struct {
	primary *pgx.Conn
	done    chan struct{}
	wg      sync.WaitGroup
	history []lsnSample   // the primary's
	samples [][]lsnSample // one per target: the standbys, then the relays
	nsb     int           // how many of the targets are standbys
	errMu   sync.Mutex
	err     error
}

const (
	regionPrimaryEvery = 5 * time.Millisecond
	regionTargetEvery  = 50 * time.Millisecond
)

func startRegionProbe(b *testing.B, primary *pgcluster.Cluster, fleet *standbyFleet, relays []*relayProc) *regionProbe {
	p := &regionProbe{primary: connectOtherDB(b, primary), done: make(chan struct{}), nsb: len(fleet.sbs)}
	// WALRELAY_REGION_STANDBY_LSN=receive samples what the standbys have
	// received and flushed instead of replayed: a tail in one and not the
	// other is the standbys' replay, not the WAL's way to them.
	standbyLSN := "pg_last_wal_replay_lsn()"
	if os.Getenv("WALRELAY_REGION_STANDBY_LSN") == "receive" {
		standbyLSN = "pg_last_wal_receive_lsn()"
	}
	var polls []func() (lsnSample, error)
	for _, c := range fleet.conns {
		polls = append(polls, func() (lsnSample, error) { return queryLSN(c.PgConn(), standbyLSN) })
	}
	for _, r := range relays {
		polls = append(polls, func() (lsnSample, error) { return relayDurableSample(r) })
	}
	p.samples = make([][]lsnSample, len(polls))
	p.wg.Add(1)
	go p.every(regionPrimaryEvery, func() error {
		s, err := queryLSN(p.primary.PgConn(), "pg_current_wal_flush_lsn()")
		if err == nil {
			p.history = append(p.history, s)
		}
		return err
	})
	for i, poll := range polls {
		p.wg.Add(1)
		go p.every(regionTargetEvery, func() error {
			s, err := poll()
			if err == nil {
				p.samples[i] = append(p.samples[i], s)
			}
			return err
		})
	}
	return p
}

// every calls f each period until the probe stops or f fails.
func (p *regionProbe) every(period time.Duration, f func() error) {
	defer p.wg.Done()
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		if err := f(); err != nil {
			p.errMu.Lock()
			p.err = err
			p.errMu.Unlock()
			return
		}
		select {
		case <-p.done:
			return
		case <-t.C:
		}
	}
}

// stop ends the sampling and returns the primary's history, the standbys'
// samples (in fleet order) and the relays'.
func (p *regionProbe) stop() (history []lsnSample, standbys, relays [][]lsnSample, err error) {
	close(p.done)
	p.wg.Wait()
	p.primary.Close(context.Background())
	return p.history, p.samples[:p.nsb], p.samples[p.nsb:], p.err
}

// relayDurableSample reads the relay's durable end from /status, timed by
// the relay's own clock when it read it.
func relayDurableSample(r *relayProc) (lsnSample, error) {
	resp, err := http.Get("http://" + r.HTTP + "/status")
	if err != nil {
		return lsnSample{}, fmt.Errorf("relay %s status: %w", r.ID, err)
	}
	defer resp.Body.Close()
	var st struct {
		Durable string    `json:"durable_lsn"`
		Time    time.Time `json:"time"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return lsnSample{}, fmt.Errorf("relay %s status: %w", r.ID, err)
	}
	lsn, err := pgcluster.ParseLSN(st.Durable)
	return lsnSample{at: st.Time, lsn: lsn}, err
}

// reportWay logs each run of the way and reports its main figures as
// metrics (over the standbys of both regions).
func reportWay(b *testing.B, regions []region, w regionWay) {
	for _, r := range w.runs {
		var lags []time.Duration
		var perRegion, relays []string
		for j, reg := range regions {
			lags = append(lags, r.lags[j]...)
			perRegion = append(perRegion, fmt.Sprintf("%s: lag p50 %.1f ms p99 %.1f ms max %.0f ms, at most %.1f MiB behind, %.1f MiB at the end, falling behind at %.2f MiB/s, caught up %.1f s after",
				reg.name, ms(percentile(r.lags[j], 50)), ms(percentile(r.lags[j], 99)), ms(percentile(r.lags[j], 100)),
				mib(r.peak[j]), mib(r.behind[j]), mib(r.growth[j]), r.catchUp[j].Seconds()))
		}
		for j, rr := range r.relays {
			relays = append(relays, fmt.Sprintf("%s lag p50 %.1f ms p99 %.1f ms max %.0f ms, CPU %.1f s, %d fsyncs p99 <= %.1f ms max <= %.0f ms",
				w.relays[j].ID, ms(percentile(rr.lags, 50)), ms(percentile(rr.lags, 99)), ms(percentile(rr.lags, 100)),
				rr.cpu.Seconds(), int(rr.fsync.count), 1000*rr.fsync.quantile(0.99), 1000*rr.fsync.quantile(1)))
		}
		p := r.load + "-"
		b.ReportMetric(r.crossed/r.wal, p+"cross-MB/MB")
		b.ReportMetric(ms(percentile(lags, 50)), p+"lag-p50-ms")
		b.ReportMetric(ms(percentile(lags, 99)), p+"lag-p99-ms")
		b.ReportMetric(mib(max(r.behind[0], r.behind[1])), p+"behind-MB")
		b.ReportMetric(max(r.catchUp[0], r.catchUp[1]).Seconds(), p+"catchup-s")
		extra := ""
		if r.tps > 0 {
			b.ReportMetric(r.tps, p+"tps")
			extra = fmt.Sprintf(", %.0f tps", r.tps)
		}
		if r.restarts > 0 {
			extra += fmt.Sprintf("; walreceivers started streaming again %d times (%s)", r.restarts, r.why)
		}
		if len(r.linkLate) > 0 {
			extra += fmt.Sprintf("; the links delivered %d chunks downstream late by p50 %.1f ms p99 %.1f ms max %.0f ms beyond their delay",
				len(r.linkLate), ms(percentile(r.linkLate, 50)), ms(percentile(r.linkLate, 99)), ms(percentile(r.linkLate, 100)))
			b.ReportMetric(ms(percentile(r.linkLate, 99)), p+"link-late-p99-ms")
		}
		if len(relays) > 0 {
			extra += "; relays (durable end): " + strings.Join(relays, "; ")
		}
		b.Logf("%s, %s: %.1f MiB of WAL in %.1f s (%.1f MiB/s, %d full-page images), %.1f MiB more while the standbys caught up; across the links %.1f MiB (%.3f MiB per MiB of WAL), %.1f MiB/s per link until every standby had the load's WAL (%.1f s); %s; CPU s: %s%s",
			w.name, r.load, mib(r.written), r.took.Seconds(), mib(r.written)/r.took.Seconds(), r.fpis, mib(r.wal-r.written), mib(r.crossed), r.crossed/r.wal,
			r.rate, r.settled.Seconds(), strings.Join(perRegion, "; "), r.cpu, extra)
	}
}

// compareWays logs and reports the direct way's figures against the
// tree's, and the tree's lag under TPC-B against its target.
func compareWays(b *testing.B, regions []region, direct, tree regionWay) {
	const target = regionDelay + 5*time.Millisecond
	for j := range direct.runs {
		d, t := direct.runs[j], tree.runs[j]
		ratio := (d.crossed / d.wal) / (t.crossed / t.wal)
		b.ReportMetric(ratio, d.load+"-cross-direct/tree")
		verdict := ""
		if d.tps > 0 {
			var p99 []string
			for k, reg := range regions {
				p99 = append(p99, fmt.Sprintf("%s %.1f ms (direct %.1f ms, p50 %.1f against %.1f ms)", reg.name,
					ms(percentile(t.lags[k], 99)), ms(percentile(d.lags[k], 99)), ms(percentile(t.lags[k], 50)), ms(percentile(d.lags[k], 50))))
			}
			verdict = fmt.Sprintf(" (target >= 8x); tree lag p99 %s (target <= %.0f ms)", strings.Join(p99, ", "), ms(target))
			var dl, tl []time.Duration
			for k := range regions {
				dl, tl = append(dl, d.lags[k]...), append(tl, t.lags[k]...)
			}
			b.ReportMetric(ms(percentile(tl, 99)-percentile(dl, 99)), d.load+"-lag-p99-tree-minus-direct-ms")
		}
		// How soon every standby had the whole load counts from its start:
		// the primary may write the same load at different rates in the
		// two ways, which moves "behind at the end" and "caught up after".
		sooner := d.settled.Seconds() / t.settled.Seconds()
		b.ReportMetric(sooner, d.load+"-delivered-direct/tree")
		b.Logf("%s: cross-region bytes per WAL byte direct/tree %.1fx%s; every standby had the load's WAL %.1f s after it began direct, %.1f s tree (%.2fx sooner); furthest behind at the end direct %.1f MiB, tree %.1f MiB; all caught up direct %.1f s, tree %.1f s after the load",
			d.load, ratio, verdict, d.settled.Seconds(), t.settled.Seconds(), sooner, mib(max(d.behind[0], d.behind[1])), mib(max(t.behind[0], t.behind[1])),
			max(d.catchUp[0], d.catchUp[1]).Seconds(), max(t.catchUp[0], t.catchUp[1]).Seconds())
	}
}

// reportRelayHealth logs what tells whether a relay streamed smoothly:
// reconnects, how its children's sessions ended, its fsyncs, the
// compression of its upstream link, and its warnings and errors.
func reportRelayHealth(b *testing.B, r *relayProc) {
	h := relayHistogram(b, r, "walrelay_store_fsync_seconds")
	up, _ := r.Status(b)["upstream"].(map[string]any)
	raw, _ := up["received_bytes"].(float64)
	wire, _ := up["received_wire_bytes"].(float64)
	var sessions []string
	for _, l := range relayMetricLines(b, r) {
		if strings.HasPrefix(l, "walrelay_downstream_sessions_total{") {
			sessions = append(sessions, strings.TrimPrefix(l, "walrelay_downstream_sessions_total"))
		}
	}
	data, err := os.ReadFile(r.LogFile)
	if err != nil {
		b.Fatal(err)
	}
	// Warnings, errors, sessions that ended in an error, and backfills.
	var notable []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") ||
			strings.Contains(l, "client session ended") || strings.Contains(l, "backfill") {
			notable = append(notable, l[:min(len(l), 250)])
		}
	}
	b.Logf("relay %s: upstream reconnects %.0f, compression %v (%.1f MiB of WAL in %.1f MiB on the wire, %.1fx); for compressed children it compressed %.1f MiB of WAL; fsync p50 <= %.1f ms, p99 <= %.1f ms, max <= %.0f ms (%d); children's sessions ended %v; %d log lines of note: %s",
		r.ID, relayMetric(b, r, "walrelay_upstream_reconnects_total"), up["compression"], mib(raw), mib(wire), raw/max(wire, 1),
		mib(relayMetric(b, r, "walrelay_link_compressed_bytes_total")),
		1000*h.quantile(0.5), 1000*h.quantile(0.99), 1000*h.quantile(1), int(h.count), sessions, len(notable), strings.Join(notable[:min(len(notable), 4)], " | "))
}

// treeBacklog stops the regional relays, runs the load, and starts them
// again: each fetches what it missed from ra across its link as fast as it
// can, which shows how much of a long link a relay uses.
func treeBacklog(b *testing.B, primary *pgcluster.Cluster, fleet *standbyFleet, tree regionWay, ld regionLoad) {
	ctx := context.Background()
	if err := ld.prepare(ctx); err != nil {
		b.Fatal(err)
	}
	mon := connectOtherDB(b, primary)
	defer mon.Close(ctx)
	start := flushLSN(b, mon)
	for _, r := range tree.remote {
		waitRelayDurable(b, r, start, time.Minute)
		r.stop(b)
	}
	if err := ld.run(ctx); err != nil {
		b.Fatal(err)
	}
	end := flushLSN(b, mon)
	waitRelayDurable(b, tree.relays[0], end, 2*time.Minute)
	var wire, wal float64
	var lines []string
	ra := tree.relays[0]
	for j, r := range tree.remote {
		l := tree.links[j]
		bytes0, raCPU0 := linkBytes([]*faultProxy{l}), cpuOf([]int{ra.cmd.Process.Pid})
		idle0, total0 := machineCPU()
		began := time.Now()
		r.Restart(b)
		profiled := profileRelays(b, []*relayProc{ra, r}, "backlog-"+r.ID)
		waitRelayDurable(b, r, end, 5*time.Minute)
		took := time.Since(began)
		crossed := float64(linkBytes([]*faultProxy{l}) - bytes0)
		raCPU, rCPU := cpuOf([]int{ra.cmd.Process.Pid})-raCPU0, cpuOf([]int{r.cmd.Process.Pid})
		idle, total := machineCPU()
		fsync := relayFsyncs(b, []*relayProc{r})[0] // a new process: all its fsyncs
		profiled.Wait()
		wire, wal = wire+mib(crossed)/took.Seconds(), wal+mib(float64(end-start))/took.Seconds()
		lines = append(lines, fmt.Sprintf("%s fetched %.1f MiB of WAL as %.1f MiB across its link in %.1f s: %.1f MiB/s of WAL, %.1f MiB/s on the wire (cap %d MiB/s); CPU %s %.1f s, %s %.1f s; %s's %d fsyncs p50 <= %.0f ms p99 <= %.0f ms; machine idle %.0f%%",
			r.ID, mib(float64(end-start)), mib(crossed), took.Seconds(), mib(float64(end-start))/took.Seconds(), mib(crossed)/took.Seconds(),
			regionRate>>20, ra.ID, raCPU.Seconds(), r.ID, rCPU.Seconds(), r.ID, int(fsync.count), 1000*fsync.quantile(0.5), 1000*fsync.quantile(0.99),
			100*(idle-idle0)/max(total-total0, 1)))
	}
	b.ReportMetric(wire/float64(len(tree.remote)), "wire-MB/s")
	b.ReportMetric(wal/float64(len(tree.remote)), "wal-MB/s")
	b.Logf("after a %.1f MiB %s load with the regional relays down, one at a time: %s", mib(float64(end-start)), ld.name, strings.Join(lines, "; "))
	waitAllReplayed(b, "backlog", fleet, end, 5*time.Minute)
}

// syncFigures runs pgbench TPC-B for d with the primary's
// synchronous_standby_names set to nothing, to the local relay ra and to
// the remote relay rb, and reports commit rate and average latency. rb
// streams from ra: if the primary does not see it, a commit is shown to
// wait, and rb is moved to stream straight from the primary across a link
// like B's to measure a remote synchronous relay.
func syncFigures(b *testing.B, primary *pgcluster.Cluster, ra, rb *relayProc, d time.Duration) {
	ctx := context.Background()
	mon := connectOtherDB(b, primary)
	defer mon.Close(ctx)
	set := func(names string) {
		if _, err := mon.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = "+quoteLiteral(names)); err != nil {
			b.Fatal(err)
		}
		if _, err := mon.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
			b.Fatal(err)
		}
	}
	defer set("")
	state := func(name string) string {
		var s string
		mon.QueryRow(ctx, "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1", name).Scan(&s)
		return s
	}
	run := func(label, names string) {
		set(names)
		if names != "" {
			waitFor(b, time.Minute, names+" the synchronous standby", func() (bool, error) { return state(names) == "sync", nil })
		}
		c0 := xactCommits(b, mon)
		if err := primary.Pgbench(ctx, 4, d); err != nil {
			b.Fatal(err)
		}
		n := float64(xactCommits(b, mon) - c0)
		tps, lat := n/d.Seconds(), 4*d.Seconds()*1000/n
		b.ReportMetric(tps, "sync-"+label+"-tps")
		b.ReportMetric(lat, "sync-"+label+"-latency-ms")
		b.Logf("synchronous_standby_names = '%s': %.0f tps, average latency %.2f ms", names, tps, lat)
	}
	run("none", "")
	run("ra", ra.ID)
	time.Sleep(2 * time.Second)
	if state(rb.ID) != "" {
		run("rb", rb.ID)
		return
	}
	b.Logf("relay %s streams from %s and is not among the primary's walsenders (pg_stat_replication): a relay does not pass its children on as standbys of its parent", rb.ID, ra.ID)
	set(rb.ID)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	began := time.Now()
	err := primary.Exec(wctx, "CREATE TABLE sync_probe(); DROP TABLE sync_probe")
	cancel()
	b.Logf("synchronous_standby_names = '%s': a commit waited %.1f s (%v)", rb.ID, time.Since(began).Seconds(), err)
	set("")
	repointRelay(b, rb, linkConninfo(newRegionLink(b, primary.Port)))
	run("rb-from-primary", rb.ID)
}

// repointRelay restarts the relay streaming from upstream.
func repointRelay(b *testing.B, r *relayProc, upstream string) {
	for i, a := range r.args {
		if a == "--upstream" && i+1 < len(r.args) {
			r.args[i+1] = upstream
		}
	}
	r.stop(b)
	r.Restart(b)
}

package e2e

import (
	"context"
	"fmt"
	"os"
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

// BenchmarkRelayOLTP compares CPU per delivered MB under a commit-paced
// load (pgbench TPC-B, scale 10, 4 clients): the consumers stream straight
// from the primary (CPU of its walsenders), then the same consumers stream
// through one relay (CPU of the relay, and of the primary's one walsender
// feeding it), in one run. Consumers are real standbys (6 and 20) or, for
// 50, replication clients in this process that acknowledge every message
// they receive, as a walreceiver does after each read.
//
//	go test -run '^$' -bench RelayOLTP -benchtime 1x ./e2e/
//
// WALRELAY_OLTP_SECONDS sets the pgbench duration (default 15);
// WALRELAY_PROFILE=FILE saves a CPU profile of the relay during its run (NAME
// in FILE becomes the sub-benchmark's name); WALRELAY_BENCH_RELAY_ARGS adds
// arguments to the relay's command line (e.g. "--sync-delay 1ms").
func BenchmarkRelayOLTP(b *testing.B) {
	for _, c := range []struct {
		name              string
		standbys, clients int
	}{{"standbys=6", 6, 0}, {"standbys=20", 20, 0}, {"clients=50", 0, 50}} {
		b.Run(c.name, func(b *testing.B) { benchOLTP(b, c.standbys, c.clients) })
	}
}

func oltpSeconds() time.Duration {
	if s, err := strconv.Atoi(os.Getenv("WALRELAY_OLTP_SECONDS")); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	return 15 * time.Second
}

func benchOLTP(b *testing.B, standbys, clients int) {
	requirePG(b)
	ctx := context.Background()
	n := standbys + clients
	primary := newPrimary(b, "primary", map[string]string{
		"max_wal_senders": strconv.Itoa(n + 10), "max_replication_slots": "10",
		"max_connections": strconv.Itoa(n + 20), "max_wal_size": "2GB",
	})
	if err := primary.PgbenchInit(ctx, 10); err != nil {
		b.Fatal(err)
	}
	var fleet oltpFleet
	if standbys > 0 {
		fleet = newStandbyFleet(b, primary, standbys)
	} else {
		fleet = &clientFleet{n: clients}
	}
	defer fleet.close()
	d := oltpSeconds()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// The relay starts after the direct run so that it takes no CPU
		// from it.
		fleet.point(b, primary, primary.Port)
		direct := oltpRun(b, primary, fleet, d, func() []int { return walsenderPIDs(b, primary) })

		args := append([]string{"--log-level", "info"}, strings.Fields(os.Getenv("WALRELAY_BENCH_RELAY_ARGS"))...)
		relay := startRelay(b, fmt.Sprintf("r%d", i), primary.ReplicationConnString(), args...)
		fleet.point(b, primary, relay.Port())
		if p := os.Getenv("WALRELAY_PROFILE"); p != "" {
			go saveProfileFor(b, relay, strings.ReplaceAll(p, "NAME", strings.ReplaceAll(b.Name(), "/", "-")), d-2*time.Second)
		}
		feeding := walsenderPIDs(b, primary, relay.ID)
		relayPID := relay.cmd.Process.Pid
		relayed := oltpRun(b, primary, fleet, d, func() []int { return append([]int{relayPID}, feeding...) })
		dPer := direct.cpu.Seconds() * 1000 / direct.mb
		rPer := relayed.cpuOf[0].Seconds() * 1000 / relayed.mb
		fPer := (relayed.cpu - relayed.cpuOf[0]).Seconds() * 1000 / relayed.mb
		b.ReportMetric(dPer, "walsenders-ms/MB")
		b.ReportMetric(rPer, "relay-ms/MB")
		b.ReportMetric(rPer/dPer, "relay/walsenders")
		b.ReportMetric(fPer, "feed-walsender-ms/MB")
		fsyncs := relayMetric(b, relay, "walrelay_store_fsync_seconds_count")
		b.Logf("per commit: walsenders %.1f us, relay %.1f us; relay fsyncs per commit %.2f",
			direct.cpu.Seconds()*1e6/direct.xacts, relayed.cpuOf[0].Seconds()*1e6/relayed.xacts, fsyncs/relayed.xacts)
		b.Logf("%d consumers, pgbench c4 %s: direct: walsenders %.0f ms CPU for %.0f MB delivered (%.3f ms/MB, %.0f tps); "+
			"through the relay: relay %.0f ms for %.0f MB (%.3f ms/MB, %.0f tps), the primary's walsender feeding it %.0f ms (%.3f ms/MB); relay/walsenders %.2f",
			n, d, direct.cpu.Seconds()*1000, direct.mb, dPer, direct.tps,
			relayed.cpuOf[0].Seconds()*1000, relayed.mb, rPer, relayed.tps, (relayed.cpu-relayed.cpuOf[0]).Seconds()*1000, fPer, rPer/dPer)
		fleet.point(b, primary, primary.Port) // release the relay before it stops
		relay.stop(b)
	}
}

// oltpResult is one run's CPU (in total and per process given), the MB the
// consumers received in total and the commit rate.
type oltpResult struct {
	cpu   time.Duration
	cpuOf []time.Duration
	mb    float64
	xacts float64
	tps   float64
}

// oltpRun runs pgbench for d once the fleet is caught up, waits until every
// consumer has everything, and returns the CPU the processes pids() named
// at the start used meanwhile.
func oltpRun(b *testing.B, primary *pgcluster.Cluster, fleet oltpFleet, d time.Duration, pids func() []int) oltpResult {
	ctx := context.Background()
	// Each run starts at a checkpoint, so that each writes about as many
	// full-page images per commit as the other.
	if err := primary.Exec(ctx, "CHECKPOINT"); err != nil {
		b.Fatal(err)
	}
	start, err := primary.QueryLSN(ctx, "SELECT pg_current_wal_flush_lsn()")
	if err != nil {
		b.Fatal(err)
	}
	fleet.waitFor(b, start)
	ps := pids()
	before := make([]time.Duration, len(ps))
	for i, p := range ps {
		before[i] = cpuOf([]int{p})
	}
	var xacts int64
	conn, err := primary.Connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)
	count := func() int64 {
		var c int64
		if err := conn.QueryRow(ctx, "SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'").Scan(&c); err != nil {
			b.Fatal(err)
		}
		return c
	}
	c0 := count()
	if err := primary.Pgbench(ctx, 4, d); err != nil {
		b.Fatal(err)
	}
	xacts = count() - c0
	end, err := primary.QueryLSN(ctx, "SELECT pg_current_wal_flush_lsn()")
	if err != nil {
		b.Fatal(err)
	}
	fleet.waitFor(b, end)
	r := oltpResult{mb: float64(end-start) * float64(fleet.size()) / (1 << 20), xacts: float64(xacts), tps: float64(xacts) / d.Seconds()}
	for i, p := range ps {
		c := cpuOf([]int{p}) - before[i]
		r.cpuOf = append(r.cpuOf, c)
		r.cpu += c
	}
	return r
}

// oltpFleet is the set of consumers a benchmark feeds.
type oltpFleet interface {
	// point makes every consumer stream from port and waits until each does.
	point(b *testing.B, primary *pgcluster.Cluster, port int)
	// waitFor waits until every consumer has received (clients) or replayed
	// (standbys) WAL up to lsn.
	waitFor(b *testing.B, lsn uint64)
	size() int
	close()
}

// standbyFleet is n standbys cloned from one base backup, small (16 MB of
// shared buffers) so that many fit on the machine.
type standbyFleet struct {
	sbs   []*pgcluster.Cluster
	conns []*pgx.Conn
}

func newStandbyFleet(b *testing.B, primary *pgcluster.Cluster, n int) *standbyFleet {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	small := map[string]string{"shared_buffers": "16MB", "max_wal_size": "256MB", "checkpoint_timeout": "30min"}
	tmpl, err := pgcluster.BaseBackup(ctx, primary, primary.ReplicationConnString(), pgcluster.Options{BaseDir: clusterBase(b), Name: "template", Conf: small})
	if err != nil {
		b.Fatal(err)
	}
	f := &standbyFleet{}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("sb%d", i)
		sb, err := tmpl.Clone(ctx, pgcluster.Options{BaseDir: clusterBase(b), Name: name,
			Conf: map[string]string{"primary_conninfo": primary.ReplicationConnString() + " application_name=" + name}})
		if err != nil {
			b.Fatal(err)
		}
		startCluster(b, sb)
		conn, err := sb.Connect(ctx)
		if err != nil {
			b.Fatal(err)
		}
		f.sbs, f.conns = append(f.sbs, sb), append(f.conns, conn)
	}
	return f
}

func (f *standbyFleet) size() int { return len(f.sbs) }

func (f *standbyFleet) point(b *testing.B, primary *pgcluster.Cluster, port int) {
	ctx := context.Background()
	for i, sb := range f.sbs {
		ci := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable application_name=%s", port, sb.Name)
		if _, err := f.conns[i].Exec(ctx, "ALTER SYSTEM SET primary_conninfo = "+quoteLiteral(ci)); err != nil {
			b.Fatal(err)
		}
		if _, err := f.conns[i].Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
			b.Fatal(err)
		}
	}
	for i, sb := range f.sbs {
		waitFor(b, time.Minute, sb.Name+" streaming from port "+strconv.Itoa(port), func() (bool, error) {
			var n int
			err := f.conns[i].QueryRow(ctx, "SELECT count(*) FROM pg_stat_wal_receiver WHERE status = 'streaming' AND sender_port = $1", port).Scan(&n)
			return n == 1, err
		})
	}
}

func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}

func (f *standbyFleet) waitFor(b *testing.B, lsn uint64) {
	ctx := context.Background()
	for i, sb := range f.sbs {
		waitFor(b, 2*time.Minute, sb.Name+" replayed "+pgcluster.FormatLSN(lsn), func() (bool, error) {
			var s string
			if err := f.conns[i].QueryRow(ctx, "SELECT pg_last_wal_replay_lsn()::text").Scan(&s); err != nil {
				return false, err
			}
			v, err := pgcluster.ParseLSN(s)
			return v >= lsn, err
		})
	}
}

func (f *standbyFleet) close() {
	for _, c := range f.conns {
		c.Close(context.Background())
	}
}

// clientFleet is n replication clients in this process. Each acknowledges
// every XLogData message with its end as written and flushed.
type clientFleet struct {
	n      int
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	got    []uint64
}

func (f *clientFleet) size() int { return f.n }

func (f *clientFleet) point(b *testing.B, primary *pgcluster.Cluster, port int) {
	f.close()
	start, err := primary.QueryLSN(context.Background(), "SELECT pg_current_wal_flush_lsn()")
	if err != nil {
		b.Fatal(err)
	}
	start = start / (16 << 20) * (16 << 20)
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.got = make([]uint64, f.n)
	for i := 0; i < f.n; i++ {
		conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable replication=true application_name=c%d", port, i))
		if err != nil {
			b.Fatal(err)
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer conn.Close(context.Background())
			ackStream(ctx, conn, start, func(end uint64) { f.mu.Lock(); f.got[i] = end; f.mu.Unlock() })
		}()
	}
}

func (f *clientFleet) waitFor(b *testing.B, lsn uint64) {
	waitFor(b, 2*time.Minute, "clients at "+pgcluster.FormatLSN(lsn), func() (bool, error) {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, g := range f.got {
			if g < lsn {
				return false, nil
			}
		}
		return true, nil
	})
}

func (f *clientFleet) close() {
	if f.cancel != nil {
		f.cancel()
		f.wg.Wait()
		f.cancel = nil
	}
}

// ackStream streams from start and acknowledges each message as a
// walreceiver acknowledges each read: write and flush at its end.
func ackStream(ctx context.Context, conn *pgconn.PgConn, start uint64, progress func(uint64)) {
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: fmt.Sprintf("START_REPLICATION %s TIMELINE 1", pgcluster.FormatLSN(start))})
	if fe.Flush() != nil {
		return
	}
	var buf []byte
	var end uint64
	for ctx.Err() == nil {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok || len(cd.Data) == 0 {
			continue
		}
		reply := false
		switch cd.Data[0] {
		case 'w':
			x, err := walstream.ParseXLogData(cd.Data)
			if err != nil {
				return
			}
			end = uint64(x.DataStart) + uint64(len(x.Data))
			progress(end)
			reply = true
		case 'k':
			k, _ := walstream.ParseKeepalive(cd.Data)
			reply = k.ReplyRequested
		}
		if reply {
			buf = walstream.AppendStandbyStatus(buf[:0], walstream.StandbyStatus{
				Write: walstream.LSN(end), Flush: walstream.LSN(end), SendTime: walstream.PGTime(time.Now())})
			fe.Send(&pgproto3.CopyData{Data: buf})
			if fe.Flush() != nil {
				return
			}
		}
	}
}

// saveProfileFor writes a CPU profile of the relay over d to path.
func saveProfileFor(b *testing.B, r *relayProc, path string, d time.Duration) {
	saveProfileURL(b, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", r.HTTP, max(1, int(d.Seconds()))), path)
}

// relayMetric reads one unlabelled metric from the relay's /metrics.
func relayMetric(b *testing.B, r *relayProc, name string) float64 {
	for _, l := range relayMetricLines(b, r) {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

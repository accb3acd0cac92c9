package e2e

import (
	"context"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// BenchmarkCatchupTipLag measures what a heavy catch-up does to the
// children at the tip. A relay holds about 400 MB of history; a standby
// streams from it at the tip under a rate-limited pgbench with a commit
// probe (the replay lag of BenchmarkRelayHop). Three phases in one run:
// no catch-up; 8 clients replaying the history from its start over and
// over with no limit; the same with the relay restarted with
// --max-catchup-rate 16MB --max-catchup-rate-total 32MB. It reports the
// tip standby's p50/p99 replay lag and the catch-up throughput of each.
//
//	go test -run '^$' -bench CatchupTipLag -benchtime 1x ./e2e/
func BenchmarkCatchupTipLag(b *testing.B) {
	requirePG(b)
	ctx := context.Background()
	primary := newPrimary(b, "primary", map[string]string{"max_wal_size": "2GB"})
	if err := primary.PgbenchInit(ctx, 5); err != nil {
		b.Fatal(err)
	}
	if err := primary.Exec(ctx, "CREATE TABLE probe(t timestamptz); CREATE TABLE bulk(id int, pad text)"); err != nil {
		b.Fatal(err)
	}
	relay := startRelay(b, "r1", primary.ReplicationConnString(), "--log-level", "info", "--retain", "2GB")
	tip := newStandby(b, primary, "tip", relay.Conninfo())
	waitStreaming(b, relay, 1, 30*time.Second)
	histStart, _ := primary.CurrentLSN(ctx)
	histStart = histStart&^(16<<20-1) + 16<<20 // the first segment boundary the relay holds whole
	for i := 0; i < 4; i++ {
		if err := primary.Exec(ctx, "INSERT INTO bulk SELECT g, repeat('x', 300) FROM generate_series(1, 250000) g; CHECKPOINT"); err != nil {
			b.Fatal(err)
		}
	}
	histEnd, _ := primary.CurrentLSN(ctx)
	waitRelayDurable(b, relay, histEnd, 2*time.Minute)
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	if err := tip.WaitReplayed(wctx, histEnd); err != nil {
		b.Fatal(err)
	}
	cancel()
	histMB := float64(histEnd-histStart) / 1e6
	b.Logf("history: %s..%s (%.0f MB)", pgcluster.FormatLSN(histStart), pgcluster.FormatLSN(histEnd), histMB)

	phase := func(name string, catchers int) {
		cctx, stop := context.WithCancel(ctx)
		var served atomic.Int64
		var wg sync.WaitGroup
		for i := 0; i < catchers; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for cctx.Err() == nil {
					// Read most of the history, then start over: a child
					// that stays far behind for the whole phase.
					if err := replayHistory(cctx, relay.Port(), fmt.Sprintf("catchup%d", i), histStart, int64(histEnd-histStart)*3/4, &served); err != nil && cctx.Err() == nil {
						b.Logf("catch-up client: %v", err)
						time.Sleep(100 * time.Millisecond)
					}
				}
			}()
		}
		began := time.Now()
		lags := measureHop(b, primary, []*pgcluster.Cluster{tip}, 15*time.Second)[0]
		secs := time.Since(began).Seconds()
		stop()
		wg.Wait()
		p50, p99 := percentile(lags, 50), percentile(lags, 99)
		rate := float64(served.Load()) / 1e6 / secs
		b.ReportMetric(ms(p50), name+"-tip-p50-ms")
		b.ReportMetric(ms(p99), name+"-tip-p99-ms")
		b.ReportMetric(rate, name+"-catchup-MB/s")
		b.Logf("%-9s tip lag p50 %6.2f ms p99 %7.2f ms (%d markers); catch-up served %.0f MB/s to %d clients",
			name, ms(p50), ms(p99), len(lags), rate, catchers)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		phase("none", 0)
		phase("unlimited", 8)
		relay.stop(b)
		relay.args = append(relay.args, "--max-catchup-rate", "16MB", "--max-catchup-rate-total", "32MB")
		relay.Restart(b)
		waitStreaming(b, relay, 1, 30*time.Second)
		phase("limited", 8)
	}
}

// replayHistory streams from start and discards what it reads until it has
// read limit bytes (counted in served), then disconnects.
func replayHistory(ctx context.Context, port int, app string, start uint64, limit int64, served *atomic.Int64) error {
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable replication=true application_name=%s", port, app))
	if err != nil {
		return err
	}
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: fmt.Sprintf("START_REPLICATION %s TIMELINE 1", pgcluster.FormatLSN(start))})
	if err := fe.Flush(); err != nil {
		conn.Close(ctx)
		return err
	}
	if msg, err := conn.ReceiveMessage(ctx); err != nil {
		conn.Close(ctx)
		return err
	} else if er, ok := msg.(*pgproto3.ErrorResponse); ok {
		conn.Close(ctx)
		return fmt.Errorf("START_REPLICATION: %s", er.Message)
	}
	hc, err := conn.Hijack()
	if err != nil {
		return err
	}
	defer hc.Conn.Close()
	stop := context.AfterFunc(ctx, func() { hc.Conn.Close() })
	defer stop()
	buf := make([]byte, 64<<10)
	var read int64
	for read < limit {
		n, err := hc.Conn.Read(buf)
		read += int64(n)
		served.Add(int64(n))
		if err != nil {
			if ctx.Err() != nil || err == io.EOF {
				return nil
			}
			return err
		}
	}
	return nil
}

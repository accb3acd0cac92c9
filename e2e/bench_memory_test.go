package e2e

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// rssMB reads a process's resident set size.
func rssMB(pid int) float64 { return procStatusMB(pid, "VmRSS") }

// walClient streams from the relay, reading as fast as it can or, when
// slow, a few kB every 50 ms (a child far behind that stays behind).
func walClient(ctx context.Context, addr string, app string, start string, slow bool) error {
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%s user=postgres sslmode=disable replication=true application_name=%s", addr, app))
	if err != nil {
		return err
	}
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: "START_REPLICATION " + start + " TIMELINE 1"})
	if err := fe.Flush(); err != nil {
		return err
	}
	if _, err := conn.ReceiveMessage(ctx); err != nil {
		return err
	}
	hc, err := conn.Hijack()
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); hc.Conn.Close() }()
	buf := make([]byte, 64<<10)
	if slow {
		buf = buf[:4<<10]
	}
	for {
		if _, err := hc.Conn.Read(buf); err != nil {
			if ctx.Err() != nil || err == io.EOF {
				return nil
			}
			return err
		}
		if slow {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// BenchmarkRelayMemory reports the relay's RSS under pgbench with 200
// children at the tip, and with 50 children reading slowly far behind it
// (targets: 256 MB and 512 MB).
//
//	go test -run '^$' -bench RelayMemory -benchtime 1x ./e2e/
func BenchmarkRelayMemory(b *testing.B) {
	for _, tc := range []struct {
		name string
		n    int
		slow bool
	}{{"tip=200", 200, false}, {"lagging=50", 50, true}} {
		b.Run(tc.name, func(b *testing.B) {
			requirePG(b)
			primary := newPgbenchPrimary(b, 5)
			relay := startRelay(b, "r1", primary.ReplicationConnString(), "--log-level", "warn")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			st := relay.Status(b)
			start := "0/0"
			if tc.slow {
				start = fmt.Sprint(st["oldest_lsn"])
			} else {
				start = fmt.Sprint(st["durable_lsn"])
			}
			port := strconv.Itoa(relay.Port())
			var wg sync.WaitGroup
			errs := make(chan error, tc.n)
			for i := 0; i < tc.n; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := walClient(ctx, port, fmt.Sprintf("c%d", i), start, tc.slow); err != nil {
						errs <- err
					}
				}()
			}
			waitStreaming(b, relay, tc.n, 60*time.Second)
			base := rssMB(relay.cmd.Process.Pid)
			b.ResetTimer()
			peak := base
			for i := 0; i < b.N; i++ {
				done := make(chan error, 1)
				go func() { done <- primary.Pgbench(context.Background(), 4, 20*time.Second) }()
				for {
					select {
					case err := <-done:
						if err != nil {
							b.Fatal(err)
						}
						goto measured
					case <-time.After(500 * time.Millisecond):
						peak = max(peak, rssMB(relay.cmd.Process.Pid))
					}
				}
			measured:
			}
			b.StopTimer()
			b.ReportMetric(peak, "peak-rss-MB")
			b.Logf("%d %s children: relay RSS %.0f MB at start, peak %.0f MB under 20 s of pgbench", tc.n, map[bool]string{true: "slow, lagging", false: "tip"}[tc.slow], base, peak)
			cancel()
			wg.Wait()
			select {
			case err := <-errs:
				b.Errorf("a client failed: %v", err)
			default:
			}
		})
	}
}

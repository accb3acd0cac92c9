package relay

import (
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/internal/waltest"
	"github.com/walrelay/walrelay/walstream"
)

// BenchmarkFanout pushes synthetic WAL through one relay server to N
// consumers over loopback and reports delivered MB/s and the relay's CPU
// time per delivered GB. Consumers run in this process too, so the CPU
// figure (process-wide) is an upper bound for the relay alone.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1, 10, 50} {
		b.Run(fmt.Sprintf("consumers=%d", n), func(b *testing.B) { benchFanout(b, n) })
	}
}

func benchFanout(b *testing.B, consumers int) {
	const walPerIter = 64 << 20
	f := newFixture(b, 0)
	clients := make([]*streamClient, consumers)
	for i := range clients {
		conn := f.connect(b, "")
		clients[i] = startStream(b, conn, "START_REPLICATION 0/0 TIMELINE 1")
	}
	// The server does not look inside WAL: reuse one generated chunk so
	// generation is not measured.
	chunk := waltest.Generate(testSysID, testSeg, 1, 0, 1<<20)
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	var delivered int64
	for it := 0; it < b.N; it++ {
		from := f.end
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.drain(b, from+walstream.LSN(walPerIter))
			}()
		}
		for written := 0; written < walPerIter; written += len(chunk) {
			f.appendRaw(b, chunk)
		}
		wg.Wait()
		delivered += int64(walPerIter) * int64(consumers)
	}
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	mbps := float64(delivered) / (1 << 20) / elapsed.Seconds()
	b.ReportMetric(mbps, "MB/s")
	b.ReportMetric(cpu.Seconds()/(float64(delivered)/(1<<30)), "cpu-s/GB")
}

// drain reads and discards WAL until the client has received up to until.
func (c *streamClient) drain(b testing.TB, until walstream.LSN) {
	c.nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			b.Error(err)
			return
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			b.Errorf("unexpected %T", msg)
			return
		}
		if data := cd.Data; len(data) > walstream.XLogDataHeaderLen && data[0] == 'w' {
			x, _ := walstream.ParseXLogData(data)
			if x.DataStart+walstream.LSN(len(x.Data)) >= until {
				return
			}
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

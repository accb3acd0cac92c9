package relay

import (
	"fmt"
	"sort"
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

// drain reads and discards WAL ('w', or 'z' without decoding it) until the
// client has received up to until, and returns the bytes of the WAL
// messages read.
func (c *streamClient) drain(b testing.TB, until walstream.LSN) int64 {
	c.nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	var n int64
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			b.Error(err)
			return n
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			b.Errorf("unexpected %T", msg)
			return n
		}
		var end walstream.LSN
		switch data := cd.Data; data[0] {
		case walstream.MsgXLogData:
			x, err := walstream.ParseXLogData(data)
			if err != nil {
				b.Error(err)
				return n
			}
			end = x.DataStart + walstream.LSN(len(x.Data))
		case walstream.MsgCompressedXLogData:
			z, err := walstream.ParseCompressedXLogData(data)
			if err != nil {
				b.Error(err)
				return n
			}
			end = z.DataStart + walstream.LSN(z.RawLen)
		default:
			continue
		}
		n += int64(len(cd.Data))
		if end >= until {
			return n
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLaggingFanout: 50 children far behind read 32 segments from the
// store while 10 children follow the tip. "memory" keeps everything in the
// memory tail; "disk" serves the lagging children from the compressed store
// (frames decoded once into the shared cache). Reports the lagging
// children's total MB/s and the tip children's delivery latency p99 with
// and without the lagging load.
func BenchmarkLaggingFanout(b *testing.B) {
	for _, mode := range []string{"memory", "disk"} {
		b.Run(mode, func(b *testing.B) {
			opts := walstream.StoreOptions{TailBytes: 64 << 20}
			if mode == "disk" {
				opts = walstream.StoreOptions{TailBytes: 1, Compress: true}
			}
			benchLagging(b, opts)
		})
	}
}

func benchLagging(b *testing.B, opts walstream.StoreOptions) {
	const history = 32 * testSeg
	f := newFixtureWith(b, 0, opts)
	chunk := waltest.Generate(testSysID, testSeg, 1, 0, 1<<20)
	for f.end < history {
		f.appendRaw(b, waltest.Generate(testSysID, testSeg, 1, uint64(f.end), 1<<20))
	}
	if opts.Compress {
		if _, err := f.store.CompactOnce(); err != nil {
			b.Fatal(err)
		}
	}
	tipLatency := func(d time.Duration, during func()) time.Duration {
		tips := make([]*streamClient, 10)
		for i := range tips {
			tips[i] = startStream(b, f.connect(b, ""), fmt.Sprintf("START_REPLICATION %s TIMELINE 1", f.end))
		}
		// Receipts are matched with publish times afterwards, so nobody
		// waits on the bookkeeping.
		var mu sync.Mutex
		type receipt struct {
			end walstream.LSN
			at  time.Time
		}
		var receipts []receipt
		published := map[walstream.LSN]time.Time{}
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for _, c := range tips {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.nc.SetReadDeadline(time.Now().Add(d + 30*time.Second))
				for {
					msg, err := c.fe.Receive()
					if err != nil {
						return
					}
					if cd, ok := msg.(*pgproto3.CopyData); ok && cd.Data[0] == 'w' {
						x, _ := walstream.ParseXLogData(cd.Data)
						r := receipt{x.DataStart + walstream.LSN(len(x.Data)), time.Now()}
						mu.Lock()
						receipts = append(receipts, r)
						mu.Unlock()
					}
					select {
					case <-stop:
						return
					default:
					}
				}
			}()
		}
		duringDone := make(chan struct{})
		go func() { defer close(duringDone); during() }()
		deadline := time.Now().Add(d)
		// Append at the tip until d has passed and the other load is over.
		for running := true; running || time.Now().Before(deadline); {
			select {
			case <-duringDone:
				running = false
			default:
			}
			// Timed from the moment the WAL is durable and published:
			// delivery only, not the fsync.
			f.appendRaw(b, chunk[:64<<10])
			at := time.Now()
			mu.Lock()
			published[f.end] = at
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
		close(stop)
		for _, c := range tips {
			c.nc.Close()
		}
		wg.Wait()
		var lats []time.Duration
		for _, r := range receipts {
			if at, ok := published[r.end]; ok {
				lats = append(lats, max(0, r.at.Sub(at)))
			}
		}
		sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
		if len(lats) == 0 {
			return 0
		}
		return lats[len(lats)*99/100]
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		quiet := tipLatency(2*time.Second, func() {})
		var mbps float64
		loaded := tipLatency(3*time.Second, func() {
			lagging := make([]*streamClient, 50)
			for i := range lagging {
				lagging[i] = startStream(b, f.connect(b, ""), "START_REPLICATION 0/0 TIMELINE 1")
			}
			t0 := time.Now()
			var wg sync.WaitGroup
			for _, c := range lagging {
				wg.Add(1)
				go func() { defer wg.Done(); c.drain(b, history); c.nc.Close() }()
			}
			wg.Wait()
			mbps = float64(50*history) / (1 << 20) / time.Since(t0).Seconds()
		})
		b.ReportMetric(mbps, "lagging-MB/s")
		b.ReportMetric(ms(quiet), "tip-p99-ms")
		b.ReportMetric(ms(loaded), "tip-p99-loaded-ms")
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkCompressedFanout: N compressed children (relays in other
// regions) follow the tip while WAL is written in commit-sized (8 KiB) or
// bulk-sized (128 KiB) pieces. "shared" is the relay as built, compressing
// once for all children that follow together; "own" makes every child
// compress for itself, as before. Children do not decompress, so the CPU
// per GB of WAL written is the relay's (plus the writer's).
func BenchmarkCompressedFanout(b *testing.B) {
	for _, n := range []int{2, 10} {
		for _, piece := range []int{8 << 10, 128 << 10} {
			for _, mode := range []string{"shared", "own"} {
				b.Run(fmt.Sprintf("children=%d/piece=%dKiB/%s", n, piece>>10, mode), func(b *testing.B) {
					benchCompressedFanout(b, n, piece, mode == "own")
				})
			}
		}
	}
}

func benchCompressedFanout(b *testing.B, children, piece int, own bool) {
	walPerIter := 32 << 20
	if piece < 64<<10 {
		walPerIter = 8 << 20 // a store sync per piece
	}
	f := newFixture(b, 0)
	f.srv.cast.off = own
	clients := make([]*streamClient, children)
	for i := range clients {
		clients[i] = startStream(b, f.connect(b, "walrelay.compression=zstd"), "START_REPLICATION 0/0 TIMELINE 1")
	}
	// Real-looking WAL (records, page headers) so zstd sees its structure.
	src := waltest.Generate(testSysID, testSeg, 1, 0, 4<<20)
	var wire int64
	var mu sync.Mutex
	b.ResetTimer()
	cpu0 := cpuTime()
	for it := 0; it < b.N; it++ {
		from := f.end
		var wg sync.WaitGroup
		for _, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := c.drain(b, from+walstream.LSN(walPerIter))
				mu.Lock()
				wire += n
				mu.Unlock()
			}()
		}
		for written := 0; written < walPerIter; written += piece {
			off := written % len(src)
			f.appendRaw(b, src[off:off+piece])
		}
		wg.Wait()
	}
	cpu := cpuTime() - cpu0
	b.StopTimer()
	gb := float64(b.N) * float64(walPerIter) / (1 << 30)
	b.ReportMetric(cpu.Seconds()/gb, "cpu-s/GB-written")
	b.ReportMetric(float64(b.N)*float64(walPerIter)*float64(children)/float64(wire), "ratio")
}

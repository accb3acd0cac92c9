package walstream

import (
	"fmt"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/waltest"
)

// BenchmarkColdTail times the writer's Write calls while a new store's
// memory tail fills, as after a relay starts: 5 segments of 16 MiB through a
// 4-segment tail in 8 KiB messages, synced every 128 KiB, with the memory
// returned to the kernel first; the first segment, whose file is filled in
// Write, is not counted. With prepared=false every tail buffer's pages
// are first touched in the writer's copy; with prepared=true (the default)
// they were touched in the background with the spare. The spare is awaited
// before each crossing in both, so only the memory differs.
func BenchmarkColdTail(b *testing.B) {
	const (
		segSize = 16 << 20
		segs    = 5
		msg     = 8 << 10
		syncPer = 16
	)
	wal := waltest.Generate(testSysID, segSize, 1, 0, segs*segSize)
	for _, prepared := range []bool{false, true} {
		b.Run(fmt.Sprintf("prepared=%v", prepared), func(b *testing.B) {
			var writing time.Duration
			for i := 0; i < b.N; i++ {
				s, err := OpenStore(filepath.Join(b.TempDir(), "store"), StoreOptions{TailBytes: 4 * segSize})
				if err != nil {
					b.Fatal(err)
				}
				s.unprepared = !prepared
				if err := s.Bind(Identity{SystemID: testSysID, SegmentSize: segSize}, "15"); err != nil {
					b.Fatal(err)
				}
				if err := s.StartAt(1, 0); err != nil {
					b.Fatal(err)
				}
				debug.FreeOSMemory()
				for pos := 0; pos < len(wal); pos += msg {
					if pos%segSize == segSize-msg {
						s.spareWG.Wait()
					}
					t0 := time.Now()
					if err := s.Write(1, LSN(pos), wal[pos:pos+msg]); err != nil {
						b.Fatal(err)
					}
					if pos >= segSize { // the first segment's file is filled in Write
						writing += time.Since(t0)
					}
					if (pos/msg)%syncPer == syncPer-1 {
						if _, err := s.Sync(); err != nil {
							b.Fatal(err)
						}
					}
				}
				if err := s.Close(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(writing)/1e6/float64(b.N)/((segs-1)*segSize>>20), "write-ms/MiB")
		})
	}
}

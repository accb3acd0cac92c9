package walstream

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/waltest"
)

// BenchmarkSegmentSwitch writes commit-sized messages, each made durable
// (Write then Sync, as the upstream client does per message), through 16 MiB
// segments on the real disk of TMPDIR, and reports how long the commits that
// cross into a new segment take against the others. With neighbours=8, eight
// goroutines each write and fsync a new 16 MiB file at every crossing, as
// PostgreSQL standbys sharing the disk zero-fill their next segment at the
// same moment (wal_init_zero): what a relay's writer waits for then is what
// the cross-region benchmark's tail is made of.
func BenchmarkSegmentSwitch(b *testing.B) {
	for _, neighbours := range []int{0, 8} {
		b.Run(fmt.Sprintf("neighbours=%d", neighbours), func(b *testing.B) {
			benchSegmentSwitch(b, neighbours)
		})
	}
}

func benchSegmentSwitch(b *testing.B, neighbours int) {
	const (
		segSize = 16 << 20
		commit  = 8 << 10
	)
	dir := b.TempDir()
	s, err := OpenStore(filepath.Join(dir, "store"), StoreOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	id := Identity{SystemID: testSysID, SegmentSize: segSize}
	if err := s.Bind(id, "15"); err != nil {
		b.Fatal(err)
	}
	if err := s.StartAt(1, 0); err != nil {
		b.Fatal(err)
	}
	// One segment to warm up (its file is filled on the writer's path),
	// then b.N segments measured.
	wal := waltest.Generate(testSysID, segSize, 1, 0, (b.N+1)*segSize)
	var wg sync.WaitGroup
	defer wg.Wait()
	neighbour := func(no, i int) {
		defer wg.Done()
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("neighbour-%d-%d", no, i)))
		if err != nil {
			b.Error(err)
			return
		}
		defer f.Close()
		zero := make([]byte, 1<<20)
		for range segSize / len(zero) {
			if _, err := f.Write(zero); err != nil {
				b.Error(err)
				return
			}
		}
		if err := f.Sync(); err != nil {
			b.Error(err)
		}
	}
	var crossing, other []time.Duration
	b.ResetTimer()
	for pos := 0; pos < len(wal); pos += commit {
		if pos%segSize == 0 && pos > 0 {
			for i := range neighbours {
				wg.Add(1)
				go neighbour(pos/segSize, i)
			}
		}
		t0 := time.Now()
		if err := s.Write(1, LSN(pos), wal[pos:pos+commit]); err != nil {
			b.Fatal(err)
		}
		if _, err := s.Sync(); err != nil {
			b.Fatal(err)
		}
		d := time.Since(t0)
		switch {
		case pos < segSize:
		case pos%segSize == segSize-commit:
			crossing = append(crossing, d)
		default:
			other = append(other, d)
		}
	}
	b.StopTimer()
	wg.Wait()
	slices.Sort(crossing)
	slices.Sort(other)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	b.ReportMetric(ms(crossing[len(crossing)-1]), "crossing-max-ms")
	b.ReportMetric(ms(crossing[len(crossing)/2]), "crossing-p50-ms")
	b.ReportMetric(ms(other[len(other)/2]), "commit-p50-ms")
	b.ReportMetric(ms(other[len(other)*99/100]), "commit-p99-ms")
}

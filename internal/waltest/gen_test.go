package waltest

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

const (
	testSysID = 7300000000000000001
	mib       = 1 << 20
)

// The segment sizes the relay's tests use and PostgreSQL's default, each
// read from a segment start over a segment boundary.
var validTests = []struct {
	name    string
	segSize uint64
	base    uint64 // a segment start
	segs    uint64
	prev    uint64 // xl_prev of the first record
}{
	{"1MiB from 0", mib, 0, 3, 0},
	{"1MiB far", mib, 0x7_0000_0000, 2, anyPrev},
	{"16MiB", 16 * mib, 5 * 16 * mib, 2, anyPrev},
}

func resetCache() {
	cache.Lock()
	cache.m, cache.order = nil, nil
	cache.Unlock()
}

// Every page and record of the stream is what xlogreader accepts, the
// records are those Records reports, and they chain across segments.
func TestGenerateIsValidWAL(t *testing.T) {
	var endsAtPage int
	for _, tc := range validTests {
		t.Run(tc.name, func(t *testing.T) {
			n := tc.segs * tc.segSize
			r := &walReader{sysID: testSysID, segSize: tc.segSize, tli: 1, base: tc.base,
				wal: Generate(testSysID, tc.segSize, 1, tc.base, int(n))}
			recs, err := r.readAll(tc.prev)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d records: %d cross a page, %d span 3 or more, %d split their header, %d end at a page's end",
				len(recs), r.crossPage, r.threePages, r.splitHeader, r.endsAtPage)
			if r.crossPage == 0 || r.threePages == 0 || r.splitHeader == 0 {
				t.Error("the stream misses a case: records crossing pages, spanning 3, splitting their header")
			}
			endsAtPage += r.endsAtPage
			if want := Records(testSysID, tc.segSize, 1, tc.base, int(n)); !slices.Equal(recs, want) {
				t.Fatalf("Records differs from the records read: %d vs %d", len(want), len(recs))
			}
			// Segments start right after the long header and end with a record.
			for seg := tc.base; seg < tc.base+n; seg += tc.segSize {
				i, ok := slices.BinarySearchFunc(recs, seg+longHeaderLen, func(r Record, lsn uint64) int { return cmp.Compare(r.Start, lsn) })
				if !ok || i == 0 && seg != tc.base || i > 0 && recs[i-1].End != seg {
					t.Errorf("segment %#x: no record at its start, or the one before does not end at it", seg)
				}
			}
			checkRecordEnds(t, tc.segSize, recs)
		})
	}
	if endsAtPage == 0 {
		t.Error("no record ends at a page's end")
	}
}

// checkRecordEnds compares RecordEndAtOrBefore with recs, which are all the
// records of whole segments.
func checkRecordEnds(t *testing.T, segSize uint64, recs []Record) {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	for k := 0; k < 2000; k++ {
		i := r.IntN(len(recs))
		var prevEnd uint64
		if i > 0 {
			prevEnd = recs[i-1].End
		} else if recs[0].Start%segSize == longHeaderLen {
			prevEnd = recs[0].Start - longHeaderLen // the previous segment's last
		}
		// Anywhere in [prevEnd, End) the answer is prevEnd; at End it is End.
		lsn := prevEnd + r.Uint64N(recs[i].End-prevEnd)
		if got := RecordEndAtOrBefore(testSysID, segSize, 1, lsn); got != prevEnd {
			t.Fatalf("RecordEndAtOrBefore(%#x) = %#x, want %#x", lsn, got, prevEnd)
		}
		if got := RecordEndAtOrBefore(testSysID, segSize, 1, recs[i].End); got != recs[i].End {
			t.Fatalf("RecordEndAtOrBefore(%#x) = %#x, want itself", recs[i].End, got)
		}
	}
	if got := RecordEndAtOrBefore(testSysID, segSize, 1, 0); got != 0 {
		t.Errorf("RecordEndAtOrBefore(0) = %#x", got)
	}
}

// The same arguments give the same bytes, and any range is the slice of a
// larger one, whatever the cache holds.
func TestGenerateSubRanges(t *testing.T) {
	for _, segSize := range []uint64{mib, 16 * mib} {
		base := 3*segSize - 40*pageSize // pages around the boundary of segments 2 and 3
		const size = 80 * pageSize
		full := Generate(testSysID, segSize, 1, base, size)
		fullRecs := Records(testSysID, segSize, 1, base, size)
		if !bytes.Equal(full, Generate(testSysID, segSize, 1, base, size)) {
			t.Fatal("two calls differ")
		}
		r := rand.New(rand.NewPCG(segSize, 3))
		for k := 0; k < 300; k++ {
			var off, n int
			switch k % 4 {
			case 0: // across the segment boundary
				off = 40*pageSize - 1 - r.IntN(3*pageSize)
				n = 2 + r.IntN(6*pageSize)
			case 1: // across a page boundary
				off = (1+r.IntN(78))*pageSize - 1 - r.IntN(64)
				n = 2 + r.IntN(128)
			case 2: // small
				off, n = r.IntN(size), r.IntN(64)
			default:
				off = r.IntN(size)
				n = r.IntN(3 * pageSize)
			}
			n = min(n, size-off)
			if k%50 == 0 {
				resetCache()
			}
			lo := base + uint64(off)
			if got := Generate(testSysID, segSize, 1, lo, n); !bytes.Equal(got, full[off:off+n]) {
				t.Fatalf("segment size %d: Generate(%#x, %d) differs from the larger range", segSize, lo, n)
			}
			var want []Record
			for _, rec := range fullRecs {
				if rec.End > lo && rec.End <= lo+uint64(n) {
					want = append(want, rec)
				}
			}
			if got := Records(testSysID, segSize, 1, lo, n); !slices.Equal(got, want) {
				t.Fatalf("segment size %d: Records(%#x, %d) = %v, want %v", segSize, lo, n, got, want)
			}
		}
	}
	if got := Generate(testSysID, mib, 1, 12345, 0); len(got) != 0 {
		t.Errorf("Generate of 0 bytes returned %d", len(got))
	}
}

// Timelines differ in page headers only.
func TestGenerateTimelines(t *testing.T) {
	const base, n = 4*mib - 5*pageSize, 10 * pageSize
	tl1, tl2 := Generate(testSysID, mib, 1, base, n), Generate(testSysID, mib, 2, base, n)
	for p := 0; p < n; p += pageSize {
		if binary.LittleEndian.Uint32(tl2[p+4:]) != 2 {
			t.Fatalf("page %#x: xlp_tli %d", base+p, binary.LittleEndian.Uint32(tl2[p+4:]))
		}
		copy(tl2[p+4:p+8], tl1[p+4:p+8])
	}
	if !bytes.Equal(tl1, tl2) {
		t.Error("timelines 1 and 2 differ outside xlp_tli")
	}
	if !slices.Equal(Records(testSysID, mib, 1, base, n), Records(testSysID, mib, 2, base, n)) {
		t.Error("Records depends on the timeline")
	}
}

// Concurrent callers, more clusters than the cache holds.
func TestGenerateConcurrent(t *testing.T) {
	const n = 20000
	want := make([][]byte, 2*cacheSize)
	for c := range want {
		want[c] = Generate(uint64(c), mib, 1, uint64(c+1)*mib-n/2, n)
	}
	resetCache()
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range want {
				c = (c + g*5) % len(want)
				if !bytes.Equal(Generate(uint64(c), mib, 1, uint64(c+1)*mib-n/2, n), want[c]) {
					t.Errorf("cluster %d differs", c)
				}
			}
		}()
	}
	wg.Wait()
}

// The reader the tests trust finds damage where xlogreader would.
func TestReaderFindsDamage(t *testing.T) {
	const segSize = mib
	recs := Records(testSysID, segSize, 1, 0, 3*segSize)
	var split, multi Record // a record whose header is split, one spanning 3 pages
	for _, r := range recs {
		if pageSize-r.Start%pageSize < recordHeadLen && split.Len == 0 {
			split = r
		}
		if r.End-r.Start > 2*pageSize+64 && multi.Len == 0 {
			multi = r
		}
	}
	if split.Len == 0 || multi.Len == 0 {
		t.Fatal("no record with a split header, or none spanning 3 pages")
	}
	nextPage := func(lsn uint64) uint64 { return lsn/pageSize*pageSize + pageSize }
	for _, tc := range []struct {
		name   string
		damage func(wal []byte)
		want   string
	}{
		{"body byte", func(w []byte) { w[multi.Start+100]++ }, "xl_crc"},
		{"body byte on a later page", func(w []byte) { w[nextPage(multi.Start)+pageSize+30]++ }, "xl_crc"},
		{"header end on the next page", func(w []byte) { w[nextPage(split.Start)+shortHeaderLen]++ }, ""},
		{"xl_prev", func(w []byte) { w[recs[500].Start+8]++ }, "xl_prev"},
		{"xlp_rem_len", func(w []byte) { w[nextPage(multi.Start)+16]++ }, "xlp_rem_len"},
		{"contrecord flag", func(w []byte) { w[nextPage(multi.Start)+2] &^= xlpFirstIsContrecord }, "contrecord"},
		{"xlp_pageaddr", func(w []byte) { w[5*pageSize+9]++ }, "xlp_pageaddr"},
		{"long header", func(w []byte) { w[segSize+32]++ }, "long header"},
		{"padding", func(w []byte) {
			for _, r := range recs {
				if r.End%8 != 0 && r.Start/pageSize == r.End/pageSize {
					w[r.End] = 1
					return
				}
			}
		}, "padding"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wal := Generate(testSysID, segSize, 1, 0, 3*segSize)
			tc.damage(wal)
			r := &walReader{sysID: testSysID, segSize: segSize, tli: 1, wal: wal}
			_, err := r.readAll(0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error about %q", err, tc.want)
			}
		})
	}
}

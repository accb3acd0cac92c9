package waltest

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
)

const (
	shortHeaderLen = 24 // MAXALIGN(SizeOfXLogShortPHD)
	longHeaderLen  = 40 // MAXALIGN(SizeOfXLogLongPHD)
	recordHeadLen  = 24 // SizeOfXLogRecord
	firstPageData  = pageSize - longHeaderLen
	pageData       = pageSize - shortHeaderLen
)

// A segment's data offset counts the bytes of its pages after their headers:
// record positions within a segment are data offsets, and the LSN of one is
// found by adding back the headers before it. Page data starts and page
// sizes are multiples of 8, so a data offset is 8-aligned exactly when its
// LSN is.

// layout is where the records of one segment lie.
type layout struct {
	base   uint64   // LSN of the segment's first byte
	starts []uint32 // data offset of each record
	lens   []uint32 // xl_tot_len of each record
}

// lsn returns the LSN of data offset d.
func (l *layout) lsn(d uint32) uint64 {
	if d < firstPageData {
		return l.base + longHeaderLen + uint64(d)
	}
	d -= firstPageData
	return l.base + uint64(1+d/pageData)*pageSize + shortHeaderLen + uint64(d%pageData)
}

// pageDataStart returns the data offset of the first byte after the header
// of the segment's page k.
func pageDataStart(k uint64) uint32 {
	if k == 0 {
		return 0
	}
	return uint32(firstPageData + (k-1)*pageData)
}

func (l *layout) start(i int) uint64 { return l.lsn(l.starts[i]) }

// end returns the LSN after record i's last byte.
func (l *layout) end(i int) uint64 { return l.lsn(l.starts[i]+l.lens[i]-1) + 1 }

// firstEndingAfter returns the index of the first record whose End is past
// lsn, or len(l.starts).
func (l *layout) firstEndingAfter(lsn uint64) int {
	return sort.Search(len(l.starts), func(i int) bool { return l.end(i) > lsn })
}

func align8(n uint32) uint32 { return (n + 7) &^ 7 }

// buildLayout draws the record lengths of segment segNo.
func buildLayout(sysID, segSize, segNo uint64) *layout {
	total := uint32(firstPageData + (segSize/pageSize-1)*pageData)
	l := &layout{base: segNo * segSize}
	r := rand.New(rand.NewPCG(sysID, segNo*0x9E3779B97F4A7C15^segSize))
	for d := uint32(0); d < total; {
		n := recordLen(r)
		// Never leave less than a record header: make this the last
		// record, ending exactly at the segment's end (total is a
		// multiple of 8, and at least 24 past d).
		if rest := total - d; align8(n) > rest-recordHeadLen {
			n = rest
		}
		l.starts = append(l.starts, d)
		l.lens = append(l.lens, n)
		d += align8(n)
	}
	return l
}

func recordLen(r *rand.Rand) uint32 {
	switch p := r.IntN(100); {
	case p < 75:
		return 40 + r.Uint32N(361)
	case p < 97:
		return 401 + r.Uint32N(7600)
	default:
		return 8001 + r.Uint32N(16000)
	}
}

func checkSegSize(segSize uint64) {
	if segSize == 0 || segSize%pageSize != 0 || segSize > 1<<30 {
		panic(fmt.Sprintf("waltest: segment size %d is not a multiple of %d up to 1 GiB", segSize, pageSize))
	}
}

type layoutKey struct{ sysID, segSize, segNo uint64 }

// A layout costs a few PRNG draws per record (about 10k for 16 MiB); the
// cache saves redrawing the segments a test is writing and their
// predecessors.
const cacheSize = 16

var cache struct {
	sync.Mutex
	m     map[layoutKey]*layout
	order []layoutKey // oldest first
}

// layoutOf returns the layout of segment segNo; it is shared and read-only.
func layoutOf(sysID, segSize, segNo uint64) *layout {
	k := layoutKey{sysID, segSize, segNo}
	cache.Lock()
	l := cache.m[k]
	cache.Unlock()
	if l != nil {
		return l
	}
	l = buildLayout(sysID, segSize, segNo)
	cache.Lock()
	defer cache.Unlock()
	if cache.m == nil {
		cache.m = make(map[layoutKey]*layout)
	}
	if _, ok := cache.m[k]; !ok {
		if len(cache.order) == cacheSize {
			delete(cache.m, cache.order[0])
			cache.order = cache.order[1:]
		}
		cache.m[k] = l
		cache.order = append(cache.order, k)
	}
	return l
}

// firstPrev returns the xl_prev of segment segNo's first record.
func firstPrev(sysID, segSize, segNo uint64) uint64 {
	if segNo == 0 {
		return 0
	}
	p := layoutOf(sysID, segSize, segNo-1)
	return p.start(len(p.starts) - 1)
}

// Record is where one generated record lies.
type Record struct {
	Start uint64 // LSN of its header
	End   uint64 // LSN after its last byte, padding excluded (package doc)
	Len   uint32 // xl_tot_len: its bytes without the page headers it crosses
}

// Records returns the records generated for the given cluster whose last
// byte lies in [start, start+n): those with start < End <= start+n, in LSN
// order. The timeline does not change them.
func Records(sysID, segSize uint64, tli uint32, start uint64, n int) []Record {
	checkSegSize(segSize)
	end := start + uint64(max(n, 0))
	var out []Record
	for seg := start / segSize; seg*segSize < end; seg++ {
		l := layoutOf(sysID, segSize, seg)
		for i := l.firstEndingAfter(start); i < len(l.starts) && l.end(i) <= end; i++ {
			out = append(out, Record{Start: l.start(i), End: l.end(i), Len: l.lens[i]})
		}
	}
	return out
}

// RecordEndAtOrBefore returns the End of the last record generated for the
// given cluster with End <= lsn, or 0 when there is none (lsn is within the
// first record of segment 0): WAL written up to lsn holds whole records up
// to there, which a store that keeps whole records must keep. The timeline
// does not change it.
func RecordEndAtOrBefore(sysID, segSize uint64, tli uint32, lsn uint64) uint64 {
	checkSegSize(segSize)
	seg := lsn / segSize
	l := layoutOf(sysID, segSize, seg)
	if i := l.firstEndingAfter(lsn) - 1; i >= 0 {
		return l.end(i)
	}
	// The previous segment's last record ends at this segment's start.
	return seg * segSize
}

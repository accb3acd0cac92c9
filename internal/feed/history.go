package feed

import (
	"sort"
	"sync"
	"time"

	"github.com/walrelay/walrelay/walstream"
)

type sample struct {
	at  time.Time
	lsn walstream.LSN
}

// History is the primary's write position sampled over time. Lag in time
// is read off it: how long before an observation the primary wrote the
// first byte a standby had not replayed. Safe for concurrent use.
type History struct {
	mu  sync.Mutex
	s   []sample // oldest first, lsn non-decreasing
	max int
}

// NewHistory keeps up to max samples (at 100 ms a sample, 6000 is ten
// minutes; a standby further behind reads as lagging at least that long).
func NewHistory(max int) *History { return &History{max: max} }

// Add records the primary at lsn at time at. A position behind the latest
// (a new primary whose WAL ends before the old one's did) starts over:
// positions of different timelines are not comparable.
func (h *History) Add(at time.Time, lsn walstream.LSN) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n := len(h.s); n > 0 && lsn < h.s[n-1].lsn {
		h.s = h.s[:0]
	}
	if len(h.s) == h.max {
		copy(h.s, h.s[1:])
		h.s = h.s[:len(h.s)-1]
	}
	h.s = append(h.s, sample{at, lsn})
}

// Reset forgets every sample (the observer lost its primary).
func (h *History) Reset() {
	h.mu.Lock()
	h.s = h.s[:0]
	h.mu.Unlock()
}

// Latest returns the newest sample.
func (h *History) Latest() (walstream.LSN, time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.s) == 0 {
		return 0, time.Time{}, false
	}
	l := h.s[len(h.s)-1]
	return l.lsn, l.at, true
}

// LagAt measures a standby observed at pos at time at: the bytes the
// primary had written beyond pos by its latest sample up to at, and how
// long before at it wrote the first of them (interpolated between the two
// samples around pos, so the resolution is the sampling interval). A
// standby at or past the primary's position has no lag, however long ago
// the primary last wrote: an idle primary's standbys serve current data.
func (h *History) LagAt(pos walstream.LSN, at time.Time) (uint64, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Samples up to the observation; a figure older than every sample is
	// measured against the oldest.
	n := sort.Search(len(h.s), func(i int) bool { return h.s[i].at.After(at) })
	if n == 0 {
		n = min(1, len(h.s))
	}
	s := h.s[:n]
	if len(s) == 0 || pos >= s[len(s)-1].lsn {
		return 0, 0
	}
	bytes := uint64(s[len(s)-1].lsn - pos)
	i := sort.Search(len(s), func(i int) bool { return s[i].lsn > pos })
	var wrote time.Time
	if i == 0 {
		wrote = s[0].at // already past pos at the oldest sample: at least this long
	} else {
		a, b := s[i-1], s[i]
		frac := float64(pos+1-a.lsn) / float64(b.lsn-a.lsn)
		wrote = a.at.Add(time.Duration(frac * float64(b.at.Sub(a.at))))
	}
	return bytes, max(0, at.Sub(wrote))
}

package relay

import (
	"sync"
	"time"

	"github.com/walrelay/walrelay/walstream"
)

// lagTracker measures write, flush and replay lag the way pg_stat_replication
// does: the time between sending a position and the client reporting it.
// It keeps a bounded ring of (position, send time) samples with one read
// head per kind of report.
type lagTracker struct {
	mu      sync.Mutex
	samples [lagSamples]lagSample
	head    int    // next write
	tails   [3]int // next unread sample per kind
	last    [3]time.Duration
}

const lagSamples = 1024

type lagSample struct {
	lsn walstream.LSN
	at  time.Time
}

func newLagTracker() *lagTracker { return &lagTracker{} }

// sent records that WAL up to lsn was sent at t.
func (l *lagTracker) sent(lsn walstream.LSN, t time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prev := (l.head + lagSamples - 1) % lagSamples
	if l.samples[prev].lsn == lsn && !l.samples[prev].at.IsZero() {
		return
	}
	next := (l.head + 1) % lagSamples
	for i := range l.tails {
		// Full: drop the oldest unread sample of a lagging reader, which
		// only makes its lag look a little smaller.
		if l.tails[i] == next {
			l.tails[i] = (next + 1) % lagSamples
		}
	}
	l.samples[l.head] = lagSample{lsn, t}
	l.head = next
}

// reply consumes samples confirmed by the reported positions and returns
// the three lags.
func (l *lagTracker) reply(write, flush, apply walstream.LSN, now time.Time) (w, f, a time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, pos := range [3]walstream.LSN{write, flush, apply} {
		var at time.Time
		for l.tails[i] != l.head && l.samples[l.tails[i]].lsn <= pos {
			at = l.samples[l.tails[i]].at
			l.tails[i] = (l.tails[i] + 1) % lagSamples
		}
		if !at.IsZero() {
			l.last[i] = now.Sub(at)
		} else if l.tails[i] == l.head {
			// Caught up and nothing new sent: no lag.
			l.last[i] = 0
		}
	}
	return l.last[0], l.last[1], l.last[2]
}

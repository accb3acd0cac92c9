package relay

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walrelay/walrelay/walstream"
)

// linkCast compresses WAL once for every compressed child that follows the
// same stretch of it, instead of once per child: with a dozen regional
// relays below one relay, zstd otherwise costs a dozen times the WAL rate.
//
// A zstd stream's bytes decode only with the history before them, so
// children can share bytes only from a frame's start on. The shared stream
// starts a frame at every multiple of castWindow; a child joins it at such a
// boundary and then follows it chunk by chunk. A child that cannot (it is
// behind what is kept, or reached a chunk nobody made yet in the middle of
// a window) compresses on its own and tries again at the next boundary.
// Chunks are made by whichever child needs one first, from the WAL it just
// read, so there is no goroutine to own.
type linkCast struct {
	compressed prometheus.Counter // WAL bytes fed to zstd, shared or not
	off        bool               // every child compresses alone (benchmarks compare)

	mu     sync.Mutex
	enc    *walstream.LinkEncoder // nil until first used
	tli    walstream.TimeLineID
	gen    uint64 // changes when the stream starts over on a new timeline
	next   walstream.LSN
	chunks map[walstream.LSN]castChunk // by start
	newest int64                       // window of the newest chunk
}

// castChunk is one message's compressed WAL. Immutable once made: senders
// write payload without copying it.
type castChunk struct {
	start, end walstream.LSN
	payload    []byte
}

// castWindow is the distance between the shared stream's frame starts. A
// frame start drops zstd's history (4 MiB window), so a shorter one costs
// ratio; a longer one makes a child wait longer to join.
const castWindow = 4 << 20

// castKeep is how many windows of chunks are kept, the newest included, so
// a follower slightly behind the one making chunks still finds them.
const castKeep = 8

func castWindowOf(pos walstream.LSN) int64 { return int64(pos / castWindow) }

// castBoundary is where the window holding pos ends.
func castBoundary(pos walstream.LSN) walstream.LSN { return (pos/castWindow + 1) * castWindow }

// castFollow is a child's place in the shared stream.
type castFollow struct {
	following bool   // the child's decoder is inside the shared stream
	gen       uint64 // ...of this generation
}

// take returns the shared chunk that starts at pos, making it from data
// (the WAL the child read from pos, not crossing a window boundary) when
// the shared stream ends at pos. ok is false when the child must compress
// data itself. A chunk returned at a window's start begins a new frame.
func (c *linkCast) take(tli walstream.TimeLineID, pos walstream.LSN, data []byte, f castFollow) (castChunk, uint64, bool, error) {
	aligned := pos%castWindow == 0
	if c.off {
		return castChunk{}, 0, false, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if tli != c.tli {
		if tli < c.tli || !aligned {
			return castChunk{}, 0, false, nil
		}
		c.tli, c.gen, c.next, c.chunks = tli, c.gen+1, 0, nil
	}
	following := f.following && f.gen == c.gen
	if !following && !aligned {
		return castChunk{}, 0, false, nil
	}
	if ch, ok := c.chunks[pos]; ok {
		return ch, c.gen, true, nil
	}
	// Make the chunk: continue the stream where it ends, or start a frame
	// at a boundary the stream has not reached (nobody followed it there).
	switch {
	case pos == c.next && c.chunks != nil && !aligned:
	case aligned && (pos >= c.next || c.chunks == nil):
		if c.enc == nil {
			enc, err := walstream.NewLinkEncoder()
			if err != nil {
				return castChunk{}, 0, false, err
			}
			c.enc = enc
		}
		c.enc.NewFrame()
	default:
		return castChunk{}, 0, false, nil
	}
	comp, err := c.enc.Compress(data)
	if err != nil {
		// The encoder's state is unknown: the next chunk starts a frame.
		c.next, c.chunks = 0, nil
		c.gen++
		return castChunk{}, 0, false, fmt.Errorf("compress WAL at %s: %w", pos, err)
	}
	c.compressed.Add(float64(len(data)))
	ch := castChunk{start: pos, end: pos + walstream.LSN(len(data)), payload: append([]byte(nil), comp...)}
	if c.chunks == nil {
		c.chunks = make(map[walstream.LSN]castChunk)
	}
	c.chunks[pos] = ch
	c.next = ch.end
	if w := castWindowOf(pos); w != c.newest {
		c.newest = w
		for at := range c.chunks {
			if castWindowOf(at) <= w-castKeep {
				delete(c.chunks, at)
			}
		}
	}
	return ch, c.gen, true, nil
}

func (c *linkCast) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.enc != nil {
		c.enc.Close()
		c.enc = nil
	}
	c.chunks = nil
}

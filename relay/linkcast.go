package relay

import (
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/walrelay/walrelay/walstream"
)

// linkCast compresses WAL once for every compressed child that follows the
// same stretch of it, instead of once per child: with a dozen regional
// relays below one relay, zstd otherwise costs a dozen times the WAL rate.
//
// A zstd stream's bytes decode only with the history before them, so
// children can share bytes only from a frame's start on. A shared stream
// starts a frame at every multiple of castWindow; a child joins one at such
// a boundary and then follows it chunk by chunk. There are a few streams,
// so that children catching up together (regional relays back after an
// outage) share one while the others follow the tip on another. A child
// that cannot join (every stream is busy elsewhere) or falls out (it
// reached a chunk no longer kept) compresses on its own and tries again at
// the next boundary. Chunks are made by whichever follower needs one
// first, from the WAL it just read, so there is no goroutine to own.
type linkCast struct {
	compressed prometheus.Counter // WAL bytes fed to zstd, shared or not
	off        bool               // every child compresses alone (benchmarks compare)

	mu      sync.Mutex
	tli     walstream.TimeLineID
	streams []*castStream
	lastID  uint64
}

// castStream is one shared compressed stream.
type castStream struct {
	id     uint64 // new whenever the stream starts over elsewhere
	enc    *walstream.LinkEncoder
	next   walstream.LSN               // where the encoder's stream ends
	chunks map[walstream.LSN]castChunk // by start
	newest int64                       // window of the newest chunk
	used   time.Time
}

// castChunk is one message's compressed WAL. Immutable once made: senders
// write payload without copying it.
type castChunk struct {
	start, end walstream.LSN
	payload    []byte
}

const (
	// castWindow is the distance between a stream's frame starts. A frame
	// start drops zstd's history (4 MiB window), so a shorter one costs
	// ratio; a longer one makes a child wait longer to join.
	castWindow = 4 << 20
	// castKeep is how many windows of chunks a stream keeps, the newest
	// included, so followers a little behind the one making chunks still
	// find them.
	castKeep = 4
	// castStreams bounds the streams (each up to castKeep windows of
	// compressed WAL and an encoder's memory).
	castStreams = 4
	// castIdle is how long a stream goes unread before it may start over
	// where another child needs one.
	castIdle = time.Second
)

func castWindowOf(pos walstream.LSN) int64 { return int64(pos / castWindow) }

// castBoundary is where the window holding pos ends.
func castBoundary(pos walstream.LSN) walstream.LSN { return (pos/castWindow + 1) * castWindow }

// castFollow is a child's place in the shared streams: the id of the
// stream its decoder is in, 0 for none.
type castFollow struct{ id uint64 }

// take returns the shared chunk that starts at pos, making it from data
// (the WAL the child read from pos, not crossing a window boundary) when
// the stream ends at pos. A chunk made earlier is taken only if it ends by
// limit(), the end of what the child may be sent (a timeline's switch point,
// say), read when a chunk is found: another child may have made it from WAL
// that became durable after this one last looked, and refusing it would
// make the child compress the same WAL again, on its own until the next
// window. ok is false when the child must compress data itself. A chunk
// returned at a window's start begins a new frame; any other continues the
// stream f names.
func (c *linkCast) take(tli walstream.TimeLineID, pos walstream.LSN, limit func() walstream.LSN, data []byte, f castFollow) (castChunk, castFollow, bool, error) {
	if c.off {
		return castChunk{}, castFollow{}, false, nil
	}
	aligned := pos%castWindow == 0
	c.mu.Lock()
	defer c.mu.Unlock()
	if tli != c.tli {
		if tli < c.tli || !aligned {
			return castChunk{}, castFollow{}, false, nil
		}
		c.tli = tli
		c.drop(func(*castStream) bool { return true })
	}
	now := time.Now()
	mine := c.stream(f.id)
	if mine != nil {
		if ch, ok := mine.chunks[pos]; ok && ch.end <= limit() {
			mine.used = now
			return ch, f, true, nil
		}
	}
	// At a frame start, a chunk another stream already made is taken
	// first: streams that reach the same WAL (children behind catching up
	// with the tip) merge instead of compressing it twice.
	var idle *castStream
	if aligned {
		for _, s := range c.streams {
			if ch, ok := s.chunks[pos]; ok && ch.end <= limit() {
				s.used = now
				return ch, castFollow{s.id}, true, nil
			}
			if idle == nil || s.used.Before(idle.used) {
				idle = s
			}
		}
	}
	if mine != nil && pos == mine.next {
		return c.make(mine, pos, data, now)
	}
	if !aligned {
		return castChunk{}, castFollow{}, false, nil
	}
	// Join a stream that ends here, or start a new one, or move one nobody
	// has read for a while.
	for _, s := range c.streams {
		if s.next == pos {
			return c.make(s, pos, data, now)
		}
	}
	if len(c.streams) < castStreams {
		enc, err := walstream.NewLinkEncoder()
		if err != nil {
			return castChunk{}, castFollow{}, false, err
		}
		s := &castStream{enc: enc}
		c.streams = append(c.streams, s)
		return c.make(s, pos, data, now)
	}
	if now.Sub(idle.used) >= castIdle {
		return c.make(idle, pos, data, now)
	}
	return castChunk{}, castFollow{}, false, nil
}

func (c *linkCast) stream(id uint64) *castStream {
	if id == 0 {
		return nil
	}
	for _, s := range c.streams {
		if s.id == id {
			return s
		}
	}
	return nil
}

// make compresses data at pos into s: the next chunk of its stream, or at
// a window's start, the first of a new frame, where s may also start over
// (a new id, so that nobody follows its old chunks into the new frame).
func (c *linkCast) make(s *castStream, pos walstream.LSN, data []byte, now time.Time) (castChunk, castFollow, bool, error) {
	if pos%castWindow == 0 {
		if pos != s.next || s.id == 0 {
			c.lastID++
			s.id, s.chunks = c.lastID, nil
		}
		s.enc.NewFrame()
	}
	comp, err := s.enc.Compress(data)
	if err != nil {
		// The encoder's state is unknown: the stream goes.
		c.drop(func(d *castStream) bool { return d == s })
		return castChunk{}, castFollow{}, false, fmt.Errorf("compress WAL at %s: %w", pos, err)
	}
	c.compressed.Add(float64(len(data)))
	ch := castChunk{start: pos, end: pos + walstream.LSN(len(data)), payload: append([]byte(nil), comp...)}
	if s.chunks == nil {
		s.chunks = make(map[walstream.LSN]castChunk)
	}
	s.chunks[pos] = ch
	s.next, s.used = ch.end, now
	if w := castWindowOf(pos); w != s.newest {
		s.newest = w
		for at := range s.chunks {
			if castWindowOf(at) <= w-castKeep {
				delete(s.chunks, at)
			}
		}
	}
	return ch, castFollow{s.id}, true, nil
}

// drop removes the streams that match.
func (c *linkCast) drop(match func(*castStream) bool) {
	kept := c.streams[:0]
	for _, s := range c.streams {
		if match(s) {
			s.enc.Close()
			continue
		}
		kept = append(kept, s)
	}
	c.streams = kept
}

func (c *linkCast) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop(func(*castStream) bool { return true })
}

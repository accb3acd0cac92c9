package walstream

import "sync/atomic"

// The memory tail holds the newest segments in segment-sized buffers.
// Fresh memory is costly to touch for the first time (page faults, which
// on a virtual machine cost far more than the copy: 13 ms or more to fill
// 16 fresh MB here, 1.3 ms to fill them again), so a buffer whose segment
// left the tail is used again for a later segment, once no reader holds a
// view of it: readers get views of the tail without a copy (Read), and a
// view pins its buffer until released.

// memBuf is one segment's memory.
type memBuf struct {
	b     []byte
	views atomic.Int64 // views handed out and not yet released
}

// View pins the memory behind bytes Read returned. Release it once the bytes
// are no longer used (written to a socket, say); the zero View pins nothing.
type View struct{ m *memBuf }

// Release unpins. Call it once.
func (v View) Release() {
	if v.m != nil {
		v.m.views.Add(-1)
	}
}

// maxRetired bounds the buffers kept for reuse.
const maxRetired = 2

// takeMemBuf returns a buffer for a new segment: a retired one nobody views,
// or a new one. Its contents are stale; only bytes written are ever read.
// Called with s.mu held.
func (s *Store) takeMemBuf() *memBuf {
	for i, m := range s.retired {
		// A buffer leaves the tail under s.mu, and views are only taken
		// under s.mu from segments in the tail: once it reads zero here, it
		// stays zero.
		if m.views.Load() == 0 {
			s.retired = append(s.retired[:i], s.retired[i+1:]...)
			return m
		}
	}
	return &memBuf{b: make([]byte, s.meta.SegmentSize)}
}

// retireMemBuf keeps the buffer of a segment leaving the tail for reuse.
// Called with s.mu held.
func (s *Store) retireMemBuf(m *memBuf) {
	if m == nil {
		return
	}
	s.retired = append(s.retired, m)
	if len(s.retired) > maxRetired {
		// The oldest goes to the garbage collector once its last view is
		// released.
		s.retired = s.retired[1:]
	}
}

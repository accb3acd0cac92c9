package e2e

import (
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// faultProxy sits on a TCP link between two processes (127.0.0.1 only) and
// can cut it (close every connection), blackhole it (stop moving bytes,
// connections left open, as a stalled peer or a dead network path looks),
// stall each chunk (SetDelay), or shape it like a link between regions:
// a one-way delay (SetLatency) and a bandwidth cap shared by every
// connection through it, per direction (SetRate). All of it can be changed
// while traffic flows, and it counts the bytes it carries.
type faultProxy struct {
	ln     net.Listener
	target string

	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	blackhole bool
	resumed   chan struct{} // closed when a blackhole ends
	delay     time.Duration // stall per chunk (SetDelay)
	latency   time.Duration // one-way delay (SetLatency)
	cuts      int

	// Per direction: to the target (client to server) and back.
	toTarget, fromTarget linkDir
}

// linkDir is one direction of a shaped link: a token bucket shared by the
// connections through it, and a byte count.
type linkDir struct {
	bucket tokenBucket
	bytes  atomic.Int64
	peak   atomic.Int64 // most bytes one connection had in flight (read, not yet delivered)

	// late is how long after its due time each chunk was delivered (the
	// rate's waits included): what the proxy itself, a process on a busy
	// machine, added to the one-way delay.
	lateMu sync.Mutex
	late   []time.Duration
}

// notePeak records the most bytes one connection had in flight.
func (d *linkDir) notePeak(q int64) {
	for {
		p := d.peak.Load()
		if q <= p || d.peak.CompareAndSwap(p, q) {
			return
		}
	}
}

func (d *linkDir) noteLate(l time.Duration) {
	d.lateMu.Lock()
	if len(d.late) < 1<<20 {
		d.late = append(d.late, l)
	}
	d.lateMu.Unlock()
}

// takeLate returns the lateness recorded since the last call.
func (d *linkDir) takeLate() []time.Duration {
	d.lateMu.Lock()
	defer d.lateMu.Unlock()
	l := d.late
	d.late = nil
	return l
}

// shapedQueueBytes bounds what one direction of one connection holds in
// flight (read, not yet delivered): a bottleneck's buffer. Past it the
// proxy stops reading, and TCP pushes back on the sender.
const shapedQueueBytes = 4 << 20

func startFaultProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}, resumed: make(chan struct{})}
	close(p.resumed)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); p.serve(c) }()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.SetBlackhole(false)
		wg.Wait()
	})
	return p
}

// Port is where clients connect instead of the target.
func (p *faultProxy) Port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *faultProxy) serve(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	p.mu.Lock()
	p.conns[client], p.conns[server] = struct{}{}, struct{}{}
	p.mu.Unlock()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(server, client, &p.toTarget) }()
	go func() { defer wg.Done(); p.pipe(client, server, &p.fromTarget) }()
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, server)
	p.mu.Unlock()
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst: a reader stamps each chunk with when it may be
// delivered (now + the one-way delay), a writer delivers it then, within
// the direction's rate. Reading goes on while earlier chunks are in
// flight, so a long link stays full instead of moving one chunk per delay.
// Chunks are small (1 KiB) so that a blackhole can stop a message in its
// middle; 32 KiB when the link is shaped, to keep high rates cheap.
func (p *faultProxy) pipe(dst, src net.Conn, dir *linkDir) {
	defer dst.Close()
	defer src.Close()
	queue := make(chan chunk, 4096)
	var inFlight sync.Mutex
	space := sync.NewCond(&inFlight)
	queued, dead := 0, false
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer src.Close() // a failed write stops the reader too
		for c := range queue {
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d)
			}
			p.mu.Lock()
			resumed := p.resumed
			p.mu.Unlock()
			<-resumed
			dir.bucket.take(len(c.b))
			if !c.due.IsZero() {
				dir.noteLate(time.Since(c.due))
			}
			_, err := dst.Write(c.b)
			inFlight.Lock()
			queued -= len(c.b)
			dead = err != nil
			space.Broadcast()
			inFlight.Unlock()
			if err != nil {
				src.Close()
				for range queue { // let the reader finish
				}
				return
			}
			dir.bytes.Add(int64(len(c.b)))
		}
	}()
	defer func() { close(queue); <-done }()
	for {
		p.mu.Lock()
		shaped := p.latency > 0 || dir.bucket.limited()
		p.mu.Unlock()
		size := 1024
		if shaped {
			size = 32 << 10
		}
		buf := make([]byte, size)
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			resumed, delay, latency := p.resumed, p.delay, p.latency
			p.mu.Unlock()
			<-resumed
			if delay > 0 {
				time.Sleep(delay)
			}
			inFlight.Lock()
			for !dead && queued > 0 && queued+n > shapedQueueBytes {
				space.Wait()
			}
			queued += n
			dir.notePeak(int64(queued))
			stop := dead
			inFlight.Unlock()
			if stop {
				return
			}
			c := chunk{b: buf[:n]}
			if latency > 0 {
				c.due = time.Now().Add(latency)
			}
			queue <- c
		}
		if err != nil {
			return
		}
	}
}

// Cut closes every connection through the proxy; new ones are accepted.
func (p *faultProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	p.cuts++
}

// SetBlackhole stops (or resumes) moving bytes on every connection.
func (p *faultProxy) SetBlackhole(on bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on == p.blackhole {
		return
	}
	p.blackhole = on
	if on {
		p.resumed = make(chan struct{})
	} else {
		close(p.resumed)
	}
}

// SetDelay stalls every chunk forwarded by d (a slow peer, not a long
// link: see SetLatency).
func (p *faultProxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// SetLatency delays every byte by d one way (each direction), as a long
// link does, without limiting how many are in flight.
func (p *faultProxy) SetLatency(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.latency = d
}

// SetRate caps each direction at bytesPerSec, shared by every connection
// through the proxy (0: no cap).
func (p *faultProxy) SetRate(bytesPerSec int64) {
	p.toTarget.bucket.setRate(bytesPerSec)
	p.fromTarget.bucket.setRate(bytesPerSec)
}

// PeakInFlight returns the most bytes from the target one connection had
// in flight at once (sent into the link, not yet delivered) since the last
// call: a sender that waits a round trip per message never has more than
// one message there.
func (p *faultProxy) PeakInFlight() int64 { return p.fromTarget.peak.Swap(0) }

// Late returns how late the proxy delivered each chunk from the target
// (the downstream direction) since the last call, beyond the one-way
// delay.
func (p *faultProxy) Late() []time.Duration { return p.fromTarget.takeLate() }

// Bytes is how many bytes went through, to the target and back.
func (p *faultProxy) Bytes() (toTarget, fromTarget int64) {
	return p.toTarget.bytes.Load(), p.fromTarget.bytes.Load()
}

// tokenBucket paces bytes at a rate, with a burst of 64 KiB or 10 ms of
// the rate, whichever is larger; the zero value is unlimited.
type tokenBucket struct {
	mu     sync.Mutex
	rate   float64 // bytes per second; 0 unlimited
	tokens float64
	last   time.Time
}

func (b *tokenBucket) setRate(r int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.rate, b.tokens, b.last = float64(r), 0, time.Now()
}

func (b *tokenBucket) limited() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rate > 0
}

// take waits until n bytes may pass.
func (b *tokenBucket) take(n int) {
	for {
		b.mu.Lock()
		if b.rate == 0 {
			b.mu.Unlock()
			return
		}
		now := time.Now()
		burst := max(64<<10, b.rate/100)
		b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
		b.last = now
		if b.tokens >= float64(n) || b.tokens >= burst {
			b.tokens -= float64(n) // may go below zero for a chunk above the burst
			b.mu.Unlock()
			return
		}
		wait := time.Duration((float64(n) - b.tokens) / b.rate * float64(time.Second))
		b.mu.Unlock()
		time.Sleep(min(wait, 50*time.Millisecond))
	}
}

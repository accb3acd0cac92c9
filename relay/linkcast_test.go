package relay

import (
	"bytes"
	"fmt"
	"math/rand"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/walrelay/walrelay/internal/waltest"
	"github.com/walrelay/walrelay/walstream"
)

// receiveZ reads a compressed link's WAL from `from` until `until` and
// returns it decoded, checking that messages are contiguous.
func (c *streamClient) receiveZ(from, until walstream.LSN) ([]byte, error) {
	dec, err := walstream.NewLinkDecoder()
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	var out []byte
	pos := from
	c.nc.SetReadDeadline(time.Now().Add(60 * time.Second))
	for pos < until {
		msg, err := c.fe.Receive()
		if err != nil {
			return out, fmt.Errorf("receive at %s: %w", pos, err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			return out, fmt.Errorf("got %T at %s", msg, pos)
		}
		switch cd.Data[0] {
		case 'w':
			return out, fmt.Errorf("uncompressed XLogData at %s on a compressed link", pos)
		case walstream.MsgCompressedXLogData:
			z, err := walstream.ParseCompressedXLogData(cd.Data)
			if err != nil {
				return out, err
			}
			if z.DataStart != pos {
				return out, fmt.Errorf("message at %s, want %s", z.DataStart, pos)
			}
			data, err := dec.Decompress(z.Payload, z.RawLen)
			if err != nil {
				return out, fmt.Errorf("message at %s: %w", pos, err)
			}
			out = append(out, data...)
			pos += walstream.LSN(len(data))
		}
	}
	return out, nil
}

// Several compressed children read the same WAL, joining at different
// places, while it is written in commit-sized and bulk-sized pieces. Each
// must decode exactly the WAL in the store, and the relay must compress
// it about once, not once per child.
func TestSharedLinkCompression(t *testing.T) {
	f := newFixture(t, 0)
	const total = 40 << 20
	want := make([]byte, 0, total)
	// The WAL all children will read, written as it is appended.
	gen := func(n int) []byte {
		d := waltest.Generate(testSysID, testSeg, 1, uint64(f.end), n)
		want = append(want, d...)
		return d
	}
	// History before anyone connects: two children start far behind it,
	// past what the tip's shared stream keeps, and catch up together.
	for f.end < 24<<20 {
		f.appendRaw(t, gen(1<<20+12345))
	}

	type child struct {
		name string
		from walstream.LSN
		c    *streamClient
	}
	start := func(name string, from walstream.LSN) child {
		conn := f.connect(t, "walrelay.compression=zstd")
		if conn.ParameterStatus(walstream.CompressionParam) != walstream.CompressionZstd {
			t.Fatalf("%s: the relay did not confirm compression", name)
		}
		return child{name, from, startStream(t, conn, fmt.Sprintf("START_REPLICATION %s TIMELINE 1", from))}
	}
	children := []child{start("a", 0), start("b", 0), start("c", f.end), start("d", 1<<20+8192)}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	got := make([][]byte, 8)
	run := func(i int, ch child) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := ch.c.receiveZ(ch.from, total)
			if err != nil {
				errs <- fmt.Errorf("child %s: %w", ch.name, err)
			}
			got[i] = b
		}()
	}
	for i, ch := range children {
		run(i, ch)
	}
	rng := rand.New(rand.NewSource(1))
	joined := false
	for f.end < total {
		n := 100 + rng.Intn(8000)
		if rng.Intn(40) == 0 {
			n = 512 << 10
		}
		n = min(n, total-int(f.end))
		f.appendRaw(t, gen(n))
		if !joined && f.end > 31<<20 {
			// One joins near the tip, mid-window.
			joined = true
			children = append(children, start("e", f.end))
			run(len(children)-1, children[len(children)-1])
		}
		if rng.Intn(4) == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	var sent int
	for i, ch := range children {
		if !bytes.Equal(got[i], want[ch.from:]) {
			t.Errorf("child %s decoded %d bytes that differ from the store's WAL from %s", ch.name, len(got[i]), ch.from)
		}
		sent += len(got[i])
	}
	var m dto.Metric
	if err := f.srv.m.linkCompressed.Write(&m); err != nil {
		t.Fatal(err)
	}
	compressed := m.GetCounter().GetValue()
	t.Logf("%d children received %.1f MiB of WAL; %.1f MiB compressed (%.2f per WAL byte written)",
		len(children), float64(sent)/(1<<20), compressed/(1<<20), compressed/total)
	// Each child may compress on its own until its first window boundary
	// (4 MiB), and the one behind compresses alone while it catches up; the
	// rest is shared. Without sharing this is the sum of what was sent.
	if compressed > 0.5*float64(sent) {
		t.Errorf("compressed %.0f bytes for %d sent: the children did not share", compressed, sent)
	}
	if compressed < float64(total-children[0].from) {
		t.Errorf("compressed %.0f bytes, less than one copy of the WAL", compressed)
	}
}

// Two compressed children at the tip, as a relay's regional children are,
// with commit-sized WAL arriving: each wakes at its own moment and sees its
// own durable end, but the WAL is compressed once. A chunk the other child
// made from WAL that became durable after this one looked is still taken
// (before, it was refused, and the child compressed on its own to the next
// window: 1.6-2x the WAL in this test).
func TestSharedLinkCompressionAtTheTip(t *testing.T) {
	f := newFixture(t, 0)
	const total = 12 << 20
	want := make([]byte, 0, total)
	var kids []*streamClient
	for range 2 {
		conn := f.connect(t, "walrelay.compression=zstd")
		kids = append(kids, startStream(t, conn, "START_REPLICATION 0/0 TIMELINE 1"))
	}
	var wg sync.WaitGroup
	got := make([][]byte, len(kids))
	errs := make([]error, len(kids))
	for i, k := range kids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = k.receiveZ(0, total)
		}()
	}
	rng := rand.New(rand.NewSource(2))
	for f.end < total {
		n := min(100+rng.Intn(8000), total-int(f.end))
		d := waltest.Generate(testSysID, testSeg, 1, uint64(f.end), n)
		want = append(want, d...)
		f.appendRaw(t, d)
		if rng.Intn(8) == 0 {
			time.Sleep(200 * time.Microsecond)
		}
	}
	wg.Wait()
	for i := range kids {
		if errs[i] != nil {
			t.Fatalf("child %d: %v", i, errs[i])
		}
		if !bytes.Equal(got[i], want) {
			t.Fatalf("child %d decoded %d bytes that differ from the store's WAL", i, len(got[i]))
		}
	}
	var m dto.Metric
	if err := f.srv.m.linkCompressed.Write(&m); err != nil {
		t.Fatal(err)
	}
	per := m.GetCounter().GetValue() / total
	t.Logf("2 children at the tip: %.2f bytes compressed per WAL byte", per)
	if per > 1.05 {
		t.Errorf("compressed %.2f bytes per WAL byte for two children following the tip together, want about 1", per)
	}
}

// The shared streams' rules, one call at a time: joining only at a frame
// start, following within a window, starting over on a new timeline, and
// never handing a chunk to a child whose decoder is in another frame.
func TestLinkCastRules(t *testing.T) {
	c := &linkCast{compressed: prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})}
	defer c.close()
	wal := func(pos walstream.LSN, n int) []byte { return waltest.Generate(testSysID, testSeg, 1, uint64(pos), n) }
	limit := walstream.LSN(1 << 40)
	take := func(tli walstream.TimeLineID, pos walstream.LSN, n int, f castFollow) (castChunk, castFollow, bool) {
		t.Helper()
		ch, nf, ok, err := c.take(tli, pos, func() walstream.LSN { return limit }, wal(pos, n), f)
		if err != nil {
			t.Fatal(err)
		}
		if ok && (ch.start != pos || len(ch.payload) == 0) {
			t.Fatalf("chunk at %s: %+v", pos, ch)
		}
		return ch, nf, ok
	}
	const w = castWindow
	if _, _, ok := take(1, 8192, 8192, castFollow{}); ok {
		t.Fatal("a child joined in the middle of a window")
	}
	first, a, ok := take(1, w, 8192, castFollow{})
	if !ok || a.id == 0 {
		t.Fatal("no stream started at a window's start")
	}
	if _, _, ok := take(1, w+8192, 4096, castFollow{}); ok {
		t.Fatal("a child not in the stream got a chunk from the middle of its frame")
	}
	next, f, ok := take(1, w+8192, 4096, a)
	if !ok || f != a {
		t.Fatal("the follower did not get the stream's next chunk")
	}
	if again, f2, ok := take(1, w+8192, 9999, a); !ok || f2 != a || !bytes.Equal(again.payload, next.payload) || again.end != next.end {
		t.Fatal("a second follower did not get the same chunk")
	}
	if again, f2, ok := take(1, w, 1, castFollow{}); !ok || f2 != a || !bytes.Equal(again.payload, first.payload) {
		t.Fatal("a child joining at the frame start did not get the chunk made there")
	}
	// Nobody is sent WAL past the end it may have (a switch point).
	limit = next.end - 1
	if _, _, ok := take(1, w+8192, 4096, a); ok {
		t.Fatal("a follower got a chunk that ends past its limit")
	}
	limit = 1 << 40
	// A new timeline starts over, at a frame start only; the old stream's
	// followers and the old timeline's children compress on their own.
	if _, _, ok := take(2, 2*w+100, 4096, a); ok {
		t.Fatal("a new timeline joined in the middle of a window")
	}
	_, b, ok := take(2, 3*w, 4096, castFollow{})
	if !ok || b.id == a.id {
		t.Fatalf("new timeline: stream %v, old %v", b, a)
	}
	if _, _, ok := take(1, w+8192+4096, 4096, a); ok {
		t.Fatal("a child on the old timeline was served from the new one's stream")
	}
	if _, _, ok := take(2, 3*w+4096, 4096, a); ok {
		t.Fatal("a follower of a dropped stream got a chunk of another frame")
	}
	// Streams are bounded: a fifth place to start needs an idle stream.
	for i := 0; i < castStreams-1; i++ {
		if _, _, ok := take(2, walstream.LSN(10+i)*w, 4096, castFollow{}); !ok {
			t.Fatalf("stream %d not started", i+2)
		}
	}
	if _, _, ok := take(2, 20*w, 4096, castFollow{}); ok {
		t.Fatal("a stream started past the bound while every stream was in use")
	}
	for _, s := range c.streams {
		s.used = s.used.Add(-castIdle)
	}
	_, moved, ok := take(2, 20*w, 4096, castFollow{})
	if !ok || moved.id <= b.id || len(c.streams) != castStreams {
		t.Fatalf("an idle stream did not move where a child needed one: %v, %d streams", moved, len(c.streams))
	}
}

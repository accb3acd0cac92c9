package walstream

import (
	"bytes"
	"testing"

	"github.com/walrelay/walrelay/internal/waltest"
)

func TestLinkCompressionRoundTrip(t *testing.T) {
	enc, err := NewLinkEncoder()
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	dec, err := NewLinkDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	var raw, wire int
	pos := uint64(0)
	for i, n := range []int{1, 100, 8192, MaxSendSize, 5000, MaxSendSize, 77, MaxSendSize, 3} {
		data := waltest.Generate(testSysID, testSeg, 1, pos, n)
		comp, err := enc.Compress(data)
		if err != nil {
			t.Fatal(err)
		}
		msg := append(AppendCompressedHeader(nil, LSN(pos), LSN(pos)+LSN(n), 42, n), comp...)
		z, err := ParseCompressedXLogData(msg)
		if err != nil || z.DataStart != LSN(pos) || z.RawLen != n || z.SendTime != 42 {
			t.Fatalf("message %d header: %+v %v", i, z, err)
		}
		got, err := dec.Decompress(z.Payload, z.RawLen)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("message %d differs after decompression", i)
		}
		raw += n
		wire += len(msg)
		pos += uint64(n)
	}
	t.Logf("%d raw bytes, %d on the wire", raw, wire)
	if wire >= raw {
		t.Errorf("compression did not shrink synthetic WAL: %d -> %d", raw, wire)
	}
}

func TestLinkDecoderRejectsCorruptInput(t *testing.T) {
	dec, _ := NewLinkDecoder()
	defer dec.Close()
	if _, err := dec.Decompress([]byte("definitely not zstd"), 100); err == nil {
		t.Error("garbage decompressed")
	}
	if _, err := ParseCompressedXLogData([]byte{'z', 1, 2}); err == nil {
		t.Error("short header accepted")
	}
	big := AppendCompressedHeader(nil, 0, 0, 0, MaxSendSize+1)
	if _, err := ParseCompressedXLogData(big); err == nil {
		t.Error("oversized raw length accepted")
	}
}

// A link's stream may end a frame and begin another, from another encoder
// with no shared history: what a relay does when a child joins or leaves
// the compressed stream it shares with its other children.
func TestLinkCompressionFrames(t *testing.T) {
	encs := make([]*LinkEncoder, 2)
	for i := range encs {
		e, err := NewLinkEncoder()
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		encs[i] = e
	}
	dec, err := NewLinkDecoder()
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	cur, pos := 0, uint64(0)
	for i, n := range []int{100, 8192, MaxSendSize, 5000, 77, MaxSendSize, 3, 40000, 1, 9000} {
		data := waltest.Generate(testSysID, testSeg, 1, pos, n)
		var payload []byte
		if i%3 == 2 {
			payload = append(payload, LinkFrameEnd...)
			cur = 1 - cur
			encs[cur].NewFrame()
		}
		comp, err := encs[cur].Compress(data)
		if err != nil {
			t.Fatal(err)
		}
		payload = append(payload, comp...)
		got, err := dec.Decompress(payload, n)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("message %d differs after decompression", i)
		}
		pos += uint64(n)
	}
	// A new frame without the old one's end is a corrupt stream, not WAL.
	encs[0].NewFrame()
	comp, _ := encs[0].Compress(waltest.Generate(testSysID, testSeg, 1, pos, 1000))
	if _, err := dec.Decompress(comp, 1000); err == nil {
		t.Error("a frame header inside a frame decoded")
	}
}

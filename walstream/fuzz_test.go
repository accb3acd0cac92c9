package walstream

import (
	"bytes"
	"github.com/walrelay/walrelay/internal/vfs"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/walrelay/walrelay/internal/waltest"
)

// Every parser of bytes that arrive from the network or the disk: no input
// makes it panic, and what it accepts encodes back to the same bytes.

func FuzzProtocolMessages(f *testing.F) {
	f.Add(AppendXLogDataHeader(nil, 0x3000000, 0x3000100, 12345))
	f.Add(AppendKeepalive(nil, Keepalive{WALEnd: 0x1000000, SendTime: 1, ReplyRequested: true}))
	f.Add(AppendStandbyStatus(nil, StandbyStatus{Write: 1, Flush: 2, Apply: 3, SendTime: 4, ReplyRequested: true}))
	f.Add(AppendHotStandbyFeedback(nil, HotStandbyFeedback{Xmin: 7, XminEpoch: 1}))
	f.Add(append(AppendCompressedHeader(nil, 0x3000000, 0x3000100, 5, 100), 0x28, 0xb5, 0x2f, 0xfd))
	f.Add([]byte{'w'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if x, err := ParseXLogData(b); err == nil {
			if got := append(AppendXLogDataHeader(nil, x.DataStart, x.WALEnd, x.SendTime), x.Data...); !bytes.Equal(got, b) {
				t.Fatalf("XLogData round trip: %x -> %x", b, got)
			}
		}
		// The last byte of a keepalive and a status is a boolean: any
		// non-zero value reads as true and writes back as 1.
		sameBool := func(got []byte) bool {
			n := len(got)
			return n <= len(b) && bytes.Equal(got[:n-1], b[:n-1]) && (got[n-1] != 0) == (b[n-1] != 0)
		}
		if k, err := ParseKeepalive(b); err == nil {
			if got := AppendKeepalive(nil, k); !sameBool(got) {
				t.Fatalf("keepalive round trip: %x -> %x", b, got)
			}
		}
		if s, err := ParseStandbyStatus(b); err == nil {
			if got := AppendStandbyStatus(nil, s); !sameBool(got) {
				t.Fatalf("standby status round trip: %x -> %x", b, got)
			}
		}
		if h, err := ParseHotStandbyFeedback(b); err == nil {
			_ = AppendHotStandbyFeedback(nil, h)
		}
		if z, err := ParseCompressedXLogData(b); err == nil {
			if z.RawLen > MaxSendSize {
				t.Fatalf("accepted a raw length of %d", z.RawLen)
			}
			d, err := NewLinkDecoder()
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			if out, err := d.Decompress(z.Payload, z.RawLen); err == nil && len(out) != z.RawLen {
				t.Fatalf("decompressed %d bytes, header says %d", len(out), z.RawLen)
			}
		}
	})
}

// A compressed link carries any WAL unchanged, message after message.
func FuzzLinkRoundTrip(f *testing.F) {
	f.Add(waltest.Generate(1, 16<<20, 1, 0x3000000, 8192), []byte("second"))
	f.Add([]byte{}, []byte{0})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		if len(a) > MaxSendSize || len(b) > MaxSendSize {
			return
		}
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
		// The third message begins a new frame, as when a child joins a
		// relay's shared stream (always with WAL: a relay sends no empty
		// message).
		for i, msg := range [][]byte{a, b, a} {
			var frameEnd []byte
			if i == 2 && len(msg) > 0 {
				enc.NewFrame()
				frameEnd = LinkFrameEnd
			}
			c, err := enc.Compress(msg)
			if err != nil {
				t.Fatal(err)
			}
			out, err := dec.Decompress(append(bytes.Clone(frameEnd), c...), len(msg))
			if err != nil {
				t.Fatalf("decompress: %v", err)
			}
			if !bytes.Equal(out, msg) {
				t.Fatal("link round trip changed the WAL")
			}
		}
	})
}

func FuzzParseHistory(f *testing.F) {
	f.Add([]byte("1\t0/3000000\tno recovery target specified\n"))
	f.Add([]byte("1\t0/3000000\tx\n2\t0/5000A28\tbefore 2026\n\n# comment\n"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHistory(b)
		if err != nil {
			return
		}
		for i := 1; i < len(h); i++ {
			if h[i].Parent <= h[i-1].Parent {
				t.Fatalf("accepted timelines out of order: %+v", h)
			}
		}
	})
}

// A compressed segment file from disk: a damaged header or index is an
// error, never a panic or a huge allocation; a good one reads back.
func FuzzZSegmentFile(f *testing.F) {
	raw := make([]byte, testSeg)
	copy(raw, waltest.Generate(testSysID, testSeg, 1, 0, 3*PageSize))
	good := encodeZSegment(raw, codecZstd)
	f.Add(good)
	f.Add(encodeZSegment(raw, codecS2))
	f.Add(good[:40])
	f.Add([]byte("WALRELAYZ"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(dir, "seg")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		fh, err := vfs.OS().Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer fh.Close()
		z, err := openZSegment(fh, testSeg)
		if err != nil {
			return
		}
		var out []byte
		for i := range z.frames {
			fr, err := z.frame(fh, "seg", i)
			if err != nil {
				return
			}
			out = append(out, fr...)
		}
		if bytes.Equal(b, good) && !bytes.Equal(out, raw) {
			t.Fatal("a good compressed segment reads back different")
		}
	})
}

// Page validation of WAL from disk or the network never reads out of range
// and cuts at a page boundary.
func FuzzValidPrefix(f *testing.F) {
	f.Add(waltest.Generate(testSysID, testSeg, 1, 0, 2*PageSize))
	f.Add(make([]byte, PageSize+5))
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, b []byte) {
		n := validPrefix(b, 0, testID, log)
		if n < 0 || n > len(b) || (n != len(b) && n%PageSize != 0) {
			t.Fatalf("validPrefix = %d of %d bytes", n, len(b))
		}
	})
}

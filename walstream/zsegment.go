package walstream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/walrelay/walrelay/internal/vfs"
	"hash/crc32"
	"sync"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
)

// Compressed segment files (*.wz).
//
// A completed segment is rewritten as independently decodable zstd frames,
// so that a read in the middle of a segment decompresses one frame, not the
// whole segment, and a damaged frame is detected before its bytes are
// served:
//
//	header  32 bytes: "WRZSEG01" | uint32 segSize | uint32 frameSize | uint32 frames | codec byte | 11 bytes zero
//	index   16 bytes a frame: uint64 file offset | uint32 length | uint32 CRC-32C of the frame bytes
//	frames  zstd frames, frame i decoding to bytes [i*frameSize, (i+1)*frameSize) of the segment
//
// Integers are little-endian. The codec is zstd (0; its frames also carry
// their own content checksum) or S2 (1: Snappy-compatible blocks, about four
// times cheaper to compress and decompress than zstd's fastest level, at
// about half its ratio on WAL). Files written before the codec byte existed
// have 0 there, and are zstd.

// Store codecs, as named by StoreOptions.Codec and --store-compression.
const (
	CodecZstd = "zstd"
	CodecS2   = "s2"
)

const (
	codecZstd byte = 0
	codecS2   byte = 1
)

func codecID(name string) (byte, error) {
	switch name {
	case CodecZstd, "":
		return codecZstd, nil
	case CodecS2:
		return codecS2, nil
	}
	return 0, fmt.Errorf("unknown store codec %q (want %s or %s)", name, CodecZstd, CodecS2)
}

const (
	zsegMagic     = "WRZSEG01"
	zsegHeaderLen = 32
	zsegIndexLen  = 16
	// ZFrameSize is the uncompressed size of one frame.
	ZFrameSize = 256 << 10
	// CompressedSuffix names compressed segment files.
	CompressedSuffix = ".wz"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CorruptError reports a compressed frame that failed its checksum. The
// segment must be fetched again; its bytes are never served.
type CorruptError struct {
	Segment string
	Frame   int
	Reason  string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("segment %s frame %d is corrupt: %s", e.Segment, e.Frame, e.Reason)
}

// ErrCorrupt is matched by every CorruptError.
var ErrCorrupt = errors.New("corrupt WAL segment")

func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

type zframe struct {
	off    int64
	length uint32
	crc    uint32
}

// zsegment is the index of an open compressed segment file.
type zsegment struct {
	codec  byte
	frames []zframe
}

var (
	zencOnce sync.Once
	zenc     *zstd.Encoder
	zdec     *zstd.Decoder
)

// codecs are shared: EncodeAll and DecodeAll are safe for concurrent use.
// The store uses zstd's fastest level: a segment is compressed once, in the
// background, and the CPU it costs counts against the relay's per-MB budget
// (BenchmarkRelayCPU); WAL still shrinks about 5x.
func codecs() (*zstd.Encoder, *zstd.Decoder) {
	zencOnce.Do(func() {
		zenc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderCRC(true),
			zstd.WithEncoderConcurrency(2))
		zdec, _ = zstd.NewReader(nil, zstd.WithDecoderConcurrency(2), zstd.WithDecoderMaxMemory(4*ZFrameSize))
	})
	return zenc, zdec
}

// encodeZSegment builds a compressed segment file from raw segment bytes.
func encodeZSegment(raw []byte, codec byte) []byte { return encodeZSegmentPaced(raw, codec, nil) }

// encodeZSegmentPaced is encodeZSegment calling pause, if set, after each
// frame with how long that frame took to compress.
func encodeZSegmentPaced(raw []byte, codec byte, pause func(took time.Duration)) []byte {
	enc, _ := codecs()
	n := (len(raw) + ZFrameSize - 1) / ZFrameSize
	// WAL compresses at least 3x in practice; the body grows if not.
	body := bytes.NewBuffer(make([]byte, 0, len(raw)/3))
	index := make([]zframe, n)
	off := int64(zsegHeaderLen + n*zsegIndexLen)
	var scratch []byte
	t0 := time.Now()
	for i := 0; i < n; i++ {
		chunk := raw[i*ZFrameSize : min(len(raw), (i+1)*ZFrameSize)]
		if codec == codecS2 {
			scratch = s2.Encode(scratch[:cap(scratch)], chunk)
		} else {
			scratch = enc.EncodeAll(chunk, scratch[:0])
		}
		index[i] = zframe{off: off, length: uint32(len(scratch)), crc: crc32.Checksum(scratch, castagnoli)}
		body.Write(scratch)
		off += int64(len(scratch))
		if pause != nil {
			pause(time.Since(t0))
			t0 = time.Now()
		}
	}
	out := make([]byte, 0, int(off))
	out = append(out, zsegMagic...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(raw)))
	out = binary.LittleEndian.AppendUint32(out, ZFrameSize)
	out = binary.LittleEndian.AppendUint32(out, uint32(n))
	out = append(out, codec)
	out = append(out, make([]byte, 11)...)
	for _, f := range index {
		out = binary.LittleEndian.AppendUint64(out, uint64(f.off))
		out = binary.LittleEndian.AppendUint32(out, f.length)
		out = binary.LittleEndian.AppendUint32(out, f.crc)
	}
	return append(out, body.Bytes()...)
}

// openZSegment reads and checks the header and index of a compressed file.
func openZSegment(f vfs.File, segSize uint64) (*zsegment, error) {
	hdr := make([]byte, zsegHeaderLen)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	if string(hdr[:8]) != zsegMagic {
		return nil, errors.New("not a compressed segment file")
	}
	if binary.LittleEndian.Uint32(hdr[8:]) != uint32(segSize) || binary.LittleEndian.Uint32(hdr[12:]) != ZFrameSize {
		return nil, fmt.Errorf("segment or frame size differs from the store's")
	}
	codec := hdr[20]
	if codec != codecZstd && codec != codecS2 {
		return nil, fmt.Errorf("unknown codec %d", codec)
	}
	n := int(binary.LittleEndian.Uint32(hdr[16:]))
	if n != int((segSize+ZFrameSize-1)/ZFrameSize) {
		return nil, fmt.Errorf("%d frames, want %d", n, (segSize+ZFrameSize-1)/ZFrameSize)
	}
	idx := make([]byte, n*zsegIndexLen)
	if _, err := f.ReadAt(idx, zsegHeaderLen); err != nil {
		return nil, fmt.Errorf("read index: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	z := &zsegment{codec: codec, frames: make([]zframe, n)}
	for i := range z.frames {
		b := idx[i*zsegIndexLen:]
		fr := zframe{off: int64(binary.LittleEndian.Uint64(b)), length: binary.LittleEndian.Uint32(b[8:]), crc: binary.LittleEndian.Uint32(b[12:])}
		// A frame never compresses to much more than its raw size; a bigger
		// length (or an offset past the end) is a damaged index, not a
		// reason to allocate gigabytes.
		if fr.off < int64(zsegHeaderLen+n*zsegIndexLen) || fr.off > st.Size() || fr.length > 2*ZFrameSize ||
			fr.off+int64(fr.length) > st.Size() {
			return nil, fmt.Errorf("frame %d lies outside the file", i)
		}
		z.frames[i] = fr
	}
	return z, nil
}

// frame returns the decoded bytes of frame i, verified.
func (z *zsegment) frame(f vfs.File, name string, i int) ([]byte, error) {
	fr := z.frames[i]
	comp := make([]byte, fr.length)
	if _, err := f.ReadAt(comp, fr.off); err != nil {
		return nil, err
	}
	if crc32.Checksum(comp, castagnoli) != fr.crc {
		return nil, &CorruptError{Segment: name, Frame: i, Reason: "checksum mismatch"}
	}
	if z.codec == codecS2 {
		// A block states its decoded length: bound it before allocating.
		if n, err := s2.DecodedLen(comp); err != nil || n > ZFrameSize {
			return nil, &CorruptError{Segment: name, Frame: i, Reason: fmt.Sprintf("decoded length %d, %v", n, err)}
		}
		raw, err := s2.Decode(nil, comp)
		if err != nil {
			return nil, &CorruptError{Segment: name, Frame: i, Reason: err.Error()}
		}
		return raw, nil
	}
	_, dec := codecs()
	raw, err := dec.DecodeAll(comp, make([]byte, 0, ZFrameSize))
	if err != nil {
		return nil, &CorruptError{Segment: name, Frame: i, Reason: err.Error()}
	}
	return raw, nil
}

// frameCache keeps recently decoded frames so children reading the same
// range from disk decode it once. Decoded frames are immutable.
type frameCache struct {
	mu    sync.Mutex
	max   int
	items map[frameKey][]byte
	order []frameKey
}

type frameKey struct {
	seg   segKey
	frame int
}

func newFrameCache(max int) *frameCache {
	return &frameCache{max: max, items: make(map[frameKey][]byte)}
}

func (c *frameCache) get(k frameKey) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.items[k]
	return b, ok
}

func (c *frameCache) put(k frameKey, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.items[k]; ok {
		return
	}
	c.items[k] = b
	c.order = append(c.order, k)
	for len(c.order) > c.max {
		delete(c.items, c.order[0])
		c.order = c.order[1:]
	}
}

func (c *frameCache) dropSegment(seg segKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.items {
		if k.seg == seg {
			delete(c.items, k)
		}
	}
}

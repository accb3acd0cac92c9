package walstream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
)

// Compressed relay-to-relay links.
//
// A relay asks its parent for compression with the startup parameter
// CompressionParam=zstd; a real PostgreSQL server accepts and ignores a
// dotted custom parameter. A parent that is a relay confirms with a
// ParameterStatus of the same name and then sends WAL as 'z' messages
// instead of 'w':
//
//	'z' | int64 dataStart | int64 walEnd | int64 sendTime | uint32 rawLen | zstd bytes
//
// The zstd bytes continue one stream per connection (the context carries
// across messages) and are flushed at every message boundary, so each
// message decodes completely on arrival: rawLen bytes of WAL from dataStart.
// The stream is a sequence of zstd frames: a sender may end the frame it is
// in (LinkFrameEnd, at the start of a message's bytes) and begin a new one,
// which lets a parent send several children the same compressed bytes from
// a frame's start on. Frames carry no checksum, so a frame's end is the
// same three bytes whoever encoded it. Keepalives and the child's replies
// are unchanged.

const (
	// CompressionParam is the startup parameter and ParameterStatus name.
	CompressionParam = "walrelay.compression"
	// NodeParam names the relay that connects as a child (so the parent
	// tells relays from standbys, e.g. to leave them out of the replica
	// feed). A dotted custom parameter: PostgreSQL accepts and ignores it.
	NodeParam = "walrelay.node"
	// CompressionZstd is its only value with an effect.
	CompressionZstd = "zstd"

	MsgCompressedXLogData = 'z'
	compressedHeaderLen   = 29
	compressionWindow     = 4 << 20
)

// AppendCompressedHeader appends the header of a 'z' message.
func AppendCompressedHeader(dst []byte, start, walEnd LSN, sendTime int64, rawLen int) []byte {
	dst = append(dst, MsgCompressedXLogData)
	dst = binary.BigEndian.AppendUint64(dst, uint64(start))
	dst = binary.BigEndian.AppendUint64(dst, uint64(walEnd))
	dst = binary.BigEndian.AppendUint64(dst, uint64(sendTime))
	return binary.BigEndian.AppendUint32(dst, uint32(rawLen))
}

// CompressedXLogData is a parsed 'z' message.
type CompressedXLogData struct {
	DataStart LSN
	WALEnd    LSN
	SendTime  int64
	RawLen    int
	Payload   []byte // zstd bytes; aliases the input
}

// ParseCompressedXLogData parses a 'z' payload (type byte included).
func ParseCompressedXLogData(b []byte) (CompressedXLogData, error) {
	if len(b) < compressedHeaderLen || b[0] != MsgCompressedXLogData {
		return CompressedXLogData{}, fmt.Errorf("invalid compressed XLogData message: %d bytes", len(b))
	}
	raw := binary.BigEndian.Uint32(b[25:])
	if raw > MaxSendSize {
		return CompressedXLogData{}, fmt.Errorf("invalid compressed XLogData message: %d raw bytes", raw)
	}
	return CompressedXLogData{
		DataStart: LSN(binary.BigEndian.Uint64(b[1:])),
		WALEnd:    LSN(binary.BigEndian.Uint64(b[9:])),
		SendTime:  int64(binary.BigEndian.Uint64(b[17:])),
		RawLen:    int(raw),
		Payload:   b[compressedHeaderLen:],
	}, nil
}

// LinkEncoder compresses one connection's WAL stream.
type LinkEncoder struct {
	out bytes.Buffer
	enc *zstd.Encoder
}

// LinkFrameEnd ends the zstd frame a link's stream is in: an empty last raw
// block. A new frame may follow.
var LinkFrameEnd = []byte{1, 0, 0}

// NewLinkEncoder returns an encoder at zstd's default level (3). Its frames
// carry no checksum (see LinkFrameEnd); TCP and the WAL records' own CRCs
// cover the bytes.
func NewLinkEncoder() (*LinkEncoder, error) {
	e := &LinkEncoder{}
	enc, err := zstd.NewWriter(&e.out, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false),
		zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithWindowSize(compressionWindow))
	if err != nil {
		return nil, err
	}
	e.enc = enc
	return e, nil
}

// Compress adds raw to the stream and returns the bytes that decode it,
// valid until the next call.
func (e *LinkEncoder) Compress(raw []byte) ([]byte, error) {
	e.out.Reset()
	if _, err := e.enc.Write(raw); err != nil {
		return nil, err
	}
	if err := e.enc.Flush(); err != nil {
		return nil, err
	}
	return e.out.Bytes(), nil
}

// NewFrame makes the next Compress begin a new frame, with no history: the
// caller sends LinkFrameEnd first when the receiver is inside a frame.
func (e *LinkEncoder) NewFrame() {
	e.out.Reset()
	e.enc.Reset(&e.out)
}

// Close releases the encoder.
func (e *LinkEncoder) Close() { e.enc.Close() }

// LinkDecoder decompresses one connection's WAL stream.
type LinkDecoder struct {
	in  feeder
	dec *zstd.Decoder
	buf []byte
}

// NewLinkDecoder returns a decoder for a LinkEncoder's stream.
func NewLinkDecoder() (*LinkDecoder, error) {
	d := &LinkDecoder{buf: make([]byte, MaxSendSize)}
	dec, err := zstd.NewReader(&d.in, zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(compressionWindow), zstd.WithDecoderLowmem(true))
	if err != nil {
		return nil, err
	}
	d.dec = dec
	return d, nil
}

// Decompress decodes one message's payload into rawLen bytes, valid until
// the next call. The payload must be exactly what Compress returned.
func (d *LinkDecoder) Decompress(payload []byte, rawLen int) ([]byte, error) {
	d.in.b = payload
	out := d.buf[:rawLen]
	n := 0
	for n < rawLen {
		m, err := d.dec.Read(out[n:])
		n += m
		if err != nil && n < rawLen {
			return nil, fmt.Errorf("decompress WAL: %w", err)
		}
	}
	if len(d.in.b) != 0 {
		return nil, fmt.Errorf("decompress WAL: %d bytes of the message left over", len(d.in.b))
	}
	return out, nil
}

// Close releases the decoder.
func (d *LinkDecoder) Close() { d.dec.Close() }

// errNoInput means the decoder wanted bytes beyond the current message: the
// stream is corrupt or was not flushed where it should have been.
var errNoInput = errors.New("compressed message ended early")

// feeder hands the decoder one message's bytes at a time.
type feeder struct{ b []byte }

func (f *feeder) Read(p []byte) (int, error) {
	if len(f.b) == 0 {
		return 0, errNoInput
	}
	n := copy(p, f.b)
	f.b = f.b[n:]
	return n, nil
}

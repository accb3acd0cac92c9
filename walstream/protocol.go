package walstream

import (
	"encoding/binary"
	"fmt"
	"time"
)

// Streaming replication CopyData payloads (PostgreSQL's protocol-replication
// docs; walsender.c and walreceiver.c). Integers are big-endian. Parsers check
// lengths before reading and never retain the input.

const (
	MsgXLogData       = 'w'
	MsgKeepalive      = 'k'
	MsgStandbyStatus  = 'r'
	MsgHotStandbyFeed = 'h'

	XLogDataHeaderLen  = 25 // type + dataStart + walEnd + sendTime
	keepaliveLen       = 18
	standbyStatusLen   = 34
	hotStandbyFeedLen  = 25
	MaxSendSize        = 128 * 1024 // walsender's MAX_SEND_SIZE
	postgresEpochDelta = 946684800  // seconds from 1970-01-01 to 2000-01-01
)

// PGTime converts t to PostgreSQL's TimestampTz: microseconds since
// 2000-01-01 00:00 UTC.
func PGTime(t time.Time) int64 {
	return t.UnixMicro() - postgresEpochDelta*1_000_000
}

// FromPGTime is the inverse of PGTime.
func FromPGTime(us int64) time.Time {
	return time.UnixMicro(us + postgresEpochDelta*1_000_000)
}

// XLogData is a 'w' message: WAL bytes starting at DataStart.
type XLogData struct {
	DataStart LSN
	WALEnd    LSN
	SendTime  int64
	Data      []byte // aliases the parsed buffer
}

// ParseXLogData parses a 'w' payload (type byte included).
func ParseXLogData(b []byte) (XLogData, error) {
	if len(b) < XLogDataHeaderLen || b[0] != MsgXLogData {
		return XLogData{}, fmt.Errorf("invalid XLogData message: %d bytes", len(b))
	}
	return XLogData{
		DataStart: LSN(binary.BigEndian.Uint64(b[1:])),
		WALEnd:    LSN(binary.BigEndian.Uint64(b[9:])),
		SendTime:  int64(binary.BigEndian.Uint64(b[17:])),
		Data:      b[XLogDataHeaderLen:],
	}, nil
}

// AppendXLogDataHeader appends the 25-byte header of a 'w' message; the
// caller appends the WAL bytes.
func AppendXLogDataHeader(dst []byte, start, walEnd LSN, sendTime int64) []byte {
	dst = append(dst, MsgXLogData)
	dst = binary.BigEndian.AppendUint64(dst, uint64(start))
	dst = binary.BigEndian.AppendUint64(dst, uint64(walEnd))
	return binary.BigEndian.AppendUint64(dst, uint64(sendTime))
}

// Keepalive is a 'k' message from a walsender.
type Keepalive struct {
	WALEnd         LSN
	SendTime       int64
	ReplyRequested bool
}

// ParseKeepalive parses a 'k' payload; like the walreceiver it insists on
// the exact length.
func ParseKeepalive(b []byte) (Keepalive, error) {
	if len(b) != keepaliveLen || b[0] != MsgKeepalive {
		return Keepalive{}, fmt.Errorf("invalid keepalive message: %d bytes", len(b))
	}
	return Keepalive{
		WALEnd:         LSN(binary.BigEndian.Uint64(b[1:])),
		SendTime:       int64(binary.BigEndian.Uint64(b[9:])),
		ReplyRequested: b[17] != 0,
	}, nil
}

// AppendKeepalive appends a 'k' payload.
func AppendKeepalive(dst []byte, k Keepalive) []byte {
	dst = append(dst, MsgKeepalive)
	dst = binary.BigEndian.AppendUint64(dst, uint64(k.WALEnd))
	dst = binary.BigEndian.AppendUint64(dst, uint64(k.SendTime))
	return append(dst, boolByte(k.ReplyRequested))
}

// StandbyStatus is an 'r' message: the positions a client has written,
// flushed and applied.
type StandbyStatus struct {
	Write, Flush, Apply LSN
	SendTime            int64
	ReplyRequested      bool
}

// ParseStandbyStatus parses an 'r' payload.
func ParseStandbyStatus(b []byte) (StandbyStatus, error) {
	if len(b) != standbyStatusLen || b[0] != MsgStandbyStatus {
		return StandbyStatus{}, fmt.Errorf("invalid standby status message: %d bytes", len(b))
	}
	return StandbyStatus{
		Write:          LSN(binary.BigEndian.Uint64(b[1:])),
		Flush:          LSN(binary.BigEndian.Uint64(b[9:])),
		Apply:          LSN(binary.BigEndian.Uint64(b[17:])),
		SendTime:       int64(binary.BigEndian.Uint64(b[25:])),
		ReplyRequested: b[33] != 0,
	}, nil
}

// AppendStandbyStatus appends an 'r' payload.
func AppendStandbyStatus(dst []byte, s StandbyStatus) []byte {
	dst = append(dst, MsgStandbyStatus)
	dst = binary.BigEndian.AppendUint64(dst, uint64(s.Write))
	dst = binary.BigEndian.AppendUint64(dst, uint64(s.Flush))
	dst = binary.BigEndian.AppendUint64(dst, uint64(s.Apply))
	dst = binary.BigEndian.AppendUint64(dst, uint64(s.SendTime))
	return append(dst, boolByte(s.ReplyRequested))
}

// HotStandbyFeedback is an 'h' message: the oldest transaction a standby's
// queries still need.
type HotStandbyFeedback struct {
	SendTime         int64
	Xmin, XminEpoch  uint32
	CatalogXmin      uint32
	CatalogXminEpoch uint32
}

// ParseHotStandbyFeedback parses an 'h' payload.
func ParseHotStandbyFeedback(b []byte) (HotStandbyFeedback, error) {
	if len(b) != hotStandbyFeedLen || b[0] != MsgHotStandbyFeed {
		return HotStandbyFeedback{}, fmt.Errorf("invalid hot standby feedback message: %d bytes", len(b))
	}
	return HotStandbyFeedback{
		SendTime:         int64(binary.BigEndian.Uint64(b[1:])),
		Xmin:             binary.BigEndian.Uint32(b[9:]),
		XminEpoch:        binary.BigEndian.Uint32(b[13:]),
		CatalogXmin:      binary.BigEndian.Uint32(b[17:]),
		CatalogXminEpoch: binary.BigEndian.Uint32(b[21:]),
	}, nil
}

// AppendHotStandbyFeedback appends an 'h' payload.
func AppendHotStandbyFeedback(dst []byte, h HotStandbyFeedback) []byte {
	dst = append(dst, MsgHotStandbyFeed)
	dst = binary.BigEndian.AppendUint64(dst, uint64(h.SendTime))
	dst = binary.BigEndian.AppendUint32(dst, h.Xmin)
	dst = binary.BigEndian.AppendUint32(dst, h.XminEpoch)
	dst = binary.BigEndian.AppendUint32(dst, h.CatalogXmin)
	return binary.BigEndian.AppendUint32(dst, h.CatalogXminEpoch)
}

func boolByte(b bool) byte {
	if b {
		return 1
	}
	return 0
}

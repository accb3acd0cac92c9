package walstream

import (
	"fmt"
	"strconv"
	"strings"
)

// WAL page size (XLOG_BLCKSZ) of every PostgreSQL build walrelay supports.
const PageSize = 8192

// PartialSuffix marks the one segment file that is still being written.
const PartialSuffix = ".partial"

// ValidSegmentSize reports whether size is a WAL segment size PostgreSQL
// allows: a power of two from 1 MB to 1 GB.
func ValidSegmentSize(size uint64) bool {
	return size >= 1<<20 && size <= 1<<30 && size&(size-1) == 0
}

// segmentsPerXLogID is XLogSegmentsPerXLogId: how many segments share the
// middle eight hex digits of a file name.
func segmentsPerXLogID(segSize uint64) uint64 { return 0x100000000 / segSize }

// SegmentFileName names segment segNo of timeline tli exactly as PostgreSQL's
// XLogFileName does: TTTTTTTTXXXXXXXXYYYYYYYY.
func SegmentFileName(tli TimeLineID, segNo, segSize uint64) string {
	per := segmentsPerXLogID(segSize)
	return fmt.Sprintf("%08X%08X%08X", uint32(tli), uint32(segNo/per), uint32(segNo%per))
}

// ParseSegmentFileName is the inverse of SegmentFileName. It accepts the bare
// 24-character name (no .partial suffix).
func ParseSegmentFileName(name string, segSize uint64) (TimeLineID, uint64, error) {
	if len(name) != 24 {
		return 0, 0, fmt.Errorf("invalid WAL segment file name %q", name)
	}
	var parts [3]uint64
	for i := range parts {
		v, err := strconv.ParseUint(name[i*8:i*8+8], 16, 32)
		if err != nil {
			return 0, 0, fmt.Errorf("invalid WAL segment file name %q: %w", name, err)
		}
		parts[i] = v
	}
	per := segmentsPerXLogID(segSize)
	if parts[2] >= per {
		return 0, 0, fmt.Errorf("invalid WAL segment file name %q for segment size %d", name, segSize)
	}
	if parts[0] == 0 {
		return 0, 0, fmt.Errorf("invalid WAL segment file name %q: timeline 0", name)
	}
	return TimeLineID(parts[0]), parts[1]*per + parts[2], nil
}

// HistoryFileName names a timeline history file as PostgreSQL does
// (%08X.history).
func HistoryFileName(tli TimeLineID) string {
	return fmt.Sprintf("%08X.history", uint32(tli))
}

// ParseSegmentSize parses the value of SHOW wal_segment_size ("16MB", "1GB",
// as PostgreSQL prints it with units) into bytes.
func ParseSegmentSize(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	var mult uint64
	switch {
	case strings.HasSuffix(s, "GB"):
		mult = 1 << 30
	case strings.HasSuffix(s, "MB"):
		mult = 1 << 20
	case strings.HasSuffix(s, "kB"):
		mult = 1 << 10
	default:
		return 0, fmt.Errorf("invalid wal_segment_size %q: want a value with unit (16MB)", s)
	}
	n, err := strconv.ParseUint(s[:len(s)-2], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid wal_segment_size %q: %w", s, err)
	}
	size := n * mult
	if !ValidSegmentSize(size) {
		return 0, fmt.Errorf("invalid wal_segment_size %q: not a power of two between 1MB and 1GB", s)
	}
	return size, nil
}

// FormatSegmentSize prints a segment size the way SHOW wal_segment_size does.
func FormatSegmentSize(size uint64) string {
	if size >= 1<<30 && size%(1<<30) == 0 {
		return fmt.Sprintf("%dGB", size>>30)
	}
	return fmt.Sprintf("%dMB", size>>20)
}

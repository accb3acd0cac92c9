package walstream

import (
	"fmt"
	"strconv"
	"strings"
)

// LSN is a PostgreSQL WAL position: a byte offset in the WAL stream.
type LSN uint64

// InvalidLSN is PostgreSQL's InvalidXLogRecPtr (0/0).
const InvalidLSN LSN = 0

// TimeLineID identifies a PostgreSQL timeline; the first one is 1.
type TimeLineID uint32

// ParseLSN parses PostgreSQL's "X/X" text form (upper or lower case hex,
// each half at most 8 digits).
func ParseLSN(s string) (LSN, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("invalid LSN %q: want X/X", s)
	}
	h, err := strconv.ParseUint(hi, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q: %w", s, err)
	}
	l, err := strconv.ParseUint(lo, 16, 32)
	if err != nil {
		return 0, fmt.Errorf("invalid LSN %q: %w", s, err)
	}
	return LSN(h<<32 | l), nil
}

// String formats the LSN as PostgreSQL does ("%X/%X").
func (l LSN) String() string {
	return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l))
}

// SegmentStart returns the position of the first byte of the segment holding l.
func (l LSN) SegmentStart(segSize uint64) LSN {
	return l - LSN(uint64(l)%segSize)
}

// SegmentNo returns the number of the segment holding l (XLByteToSeg).
func (l LSN) SegmentNo(segSize uint64) uint64 {
	return uint64(l) / segSize
}

// SegmentOffset returns l's offset inside its segment.
func (l LSN) SegmentOffset(segSize uint64) uint64 {
	return uint64(l) % segSize
}

// MarshalText formats the LSN as "X/X" (JSON, YAML, flags).
func (l LSN) MarshalText() ([]byte, error) { return []byte(l.String()), nil }

// UnmarshalText parses "X/X".
func (l *LSN) UnmarshalText(b []byte) error {
	v, err := ParseLSN(string(b))
	if err != nil {
		return err
	}
	*l = v
	return nil
}

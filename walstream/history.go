package walstream

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// HistoryEntry is one line of a timeline history file: timeline Parent
// ended at SwitchPoint, where its child timeline begins.
type HistoryEntry struct {
	Parent      TimeLineID
	SwitchPoint LSN
}

// ParseHistory reads a timeline history file (%08X.history) as
// PostgreSQL's readTimeLineHistory does: one "parentTLI<TAB>X/X<TAB>reason"
// line per ancestor, oldest first; blank lines and # comments are skipped.
func ParseHistory(content []byte) ([]HistoryEntry, error) {
	var out []HistoryEntry
	sc := bufio.NewScanner(bytes.NewReader(content))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return nil, fmt.Errorf("timeline history line %d: %q", n, line)
		}
		tli, err := strconv.ParseUint(fields[0], 10, 32)
		if err != nil || tli == 0 {
			return nil, fmt.Errorf("timeline history line %d: invalid timeline %q", n, fields[0])
		}
		lsn, err := ParseLSN(fields[1])
		if err != nil {
			return nil, fmt.Errorf("timeline history line %d: %w", n, err)
		}
		if len(out) > 0 && (TimeLineID(tli) <= out[len(out)-1].Parent || lsn < out[len(out)-1].SwitchPoint) {
			return nil, fmt.Errorf("timeline history line %d: timelines and switch points must increase", n)
		}
		out = append(out, HistoryEntry{Parent: TimeLineID(tli), SwitchPoint: lsn})
	}
	return out, sc.Err()
}

// SwitchPointOf returns where timeline tli ended according to history (the
// history of a later timeline), and false if tli is not one of its
// ancestors.
func SwitchPointOf(history []HistoryEntry, tli TimeLineID) (LSN, bool) {
	for _, e := range history {
		if e.Parent == tli {
			return e.SwitchPoint, true
		}
	}
	return 0, false
}

// NextTimeline returns the timeline that follows tli in history and where
// it starts, for the end-of-timeline message.
func NextTimeline(history []HistoryEntry, current, tli TimeLineID) (TimeLineID, LSN, bool) {
	for i, e := range history {
		if e.Parent == tli {
			next := current
			if i+1 < len(history) {
				next = history[i+1].Parent
			}
			return next, e.SwitchPoint, true
		}
	}
	return 0, 0, false
}

package walstream

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// Record-level validation of WAL, as PostgreSQL's xlogreader does it
// (xlogreader.c: XLogReadRecord, ValidXLogRecordHeader, ValidXLogRecord).
// Page headers alone cannot tell a torn tail: after a power loss a page may
// hold its header and a record's first half, then zeros or stale bytes. A
// record is whole only when its length is consistent across the pages it
// spans (XLP_FIRST_IS_CONTRECORD, xlp_rem_len), it points back at the record
// before it (xl_prev), and its CRC-32C matches.

const (
	pageRemLenOffset     = 16 // uint32 xlp_rem_len
	xlpFirstIsContrecord = 0x0001

	// XLogRecord: xl_tot_len uint32, xl_xid uint32, xl_prev uint64,
	// xl_info uint8, xl_rmid uint8, 2 bytes padding, xl_crc uint32.
	recordHeaderLen  = 24
	recordPrevOffset = 8
	recordInfoOffset = 16
	recordRmidOffset = 17
	recordCRCOffset  = 20
	// PostgreSQL refuses records above 1020 MB (XLogRecordMaxSize).
	maxRecordLen = 1020 << 20

	rmXLOG       = 0    // RM_XLOG_ID
	xlogSwitch   = 0x40 // XLOG_SWITCH
	xlrInfoMask  = 0x0F // XLR_INFO_MASK: bits the resource manager does not own
	walAlignment = 8    // MAXALIGN
)

// Record is where one WAL record lies: Start is its first byte, End the
// byte after its last (page headers it crosses included; the padding to the
// next record is not part of it).
type Record struct {
	Start, End LSN
	// Switch is an XLOG_SWITCH record: the rest of its segment is padding.
	Switch bool
}

// RecordError says where and why a record stream stops being valid.
type RecordError struct {
	At     LSN // the record (or page) found invalid
	Reason string
	// Incomplete is true when the bytes ran out before the record ended
	// (not damage: the rest was not written yet).
	Incomplete bool
}

func (e *RecordError) Error() string { return fmt.Sprintf("WAL record at %s: %s", e.At, e.Reason) }

// walSpan is WAL bytes [base, base+len(data)) of one timeline.
type walSpan struct {
	data []byte
	base LSN
	id   Identity
}

func (w walSpan) end() LSN { return w.base + LSN(len(w.data)) }

func (w walSpan) at(lsn LSN) []byte { return w.data[lsn-w.base:] }

// pageHeaderLen is the size of the header of the page starting at page.
func pageHeaderLen(page LSN, segSize uint64) LSN {
	if page.SegmentOffset(segSize) == 0 {
		return longPageHeaderLen
	}
	return shortPageHeaderLen
}

// checkPageAt validates the header of the page starting at page and returns
// its xlp_info and xlp_rem_len. magic 0 accepts any magic.
func (w walSpan) checkPageAt(page LSN, magic uint16) (info uint16, remLen uint32, err error) {
	hdr := pageHeaderLen(page, w.id.SegmentSize)
	if page+hdr > w.end() {
		return 0, 0, &RecordError{At: page, Reason: "page header not complete", Incomplete: true}
	}
	b := w.at(page)[:min(PageSize, int(w.end()-page))]
	if allZero(b[:hdr]) {
		// Never written (segment files are zero-filled), or zeroed by a
		// power loss: either way the WAL ends here.
		return 0, 0, &RecordError{At: page, Reason: "page not written", Incomplete: true}
	}
	if err := checkPage(b, page, magic, w.id); err != nil {
		return 0, 0, &RecordError{At: page, Reason: err.Error()}
	}
	return binary.LittleEndian.Uint16(b[pageInfoOffset:]), binary.LittleEndian.Uint32(b[pageRemLenOffset:]), nil
}

// firstRecord returns where the first record starting in the segment that
// begins at seg lies: after the segment's long page header and, when the
// segment begins inside a record, after that record's continuation (checked
// by its page headers only). ok is false when no record starts in the bytes
// held.
func (w walSpan) firstRecord(seg LSN) (first LSN, ok bool, err error) {
	info, remLen, err := w.checkPageAt(seg, 0)
	if err != nil {
		return 0, false, err
	}
	pos := seg + longPageHeaderLen
	if info&xlpFirstIsContrecord == 0 {
		return pos, true, nil
	}
	for {
		onPage := LSN(PageSize) - LSN(uint64(pos)%PageSize)
		if LSN(remLen) <= onPage {
			pos = alignUp(pos + LSN(remLen))
			return pos, pos < w.end(), nil
		}
		remLen -= uint32(onPage)
		pos += onPage
		if pos.SegmentOffset(w.id.SegmentSize) == 0 || pos >= w.end() {
			return 0, false, nil // longer than the segment, or not all held
		}
		i, r, err := w.checkPageAt(pos, 0)
		if err != nil {
			return 0, false, err
		}
		if i&xlpFirstIsContrecord == 0 || r != remLen {
			return 0, false, &RecordError{At: pos, Reason: fmt.Sprintf("continuation page says rem_len %d (contrecord flag %v), want %d", r, i&xlpFirstIsContrecord != 0, remLen)}
		}
		pos += shortPageHeaderLen
	}
}

func alignUp(l LSN) LSN { return (l + walAlignment - 1) &^ (walAlignment - 1) }

// readRecord validates the record at pos (8-aligned; at a page start the
// record begins after the page header) whose predecessor starts at prev (0:
// unknown), and returns where it lies. magic is the segment's page magic.
func (w walSpan) readRecord(pos, prev LSN, magic uint16) (Record, error) {
	if uint64(pos)%PageSize == 0 {
		info, _, err := w.checkPageAt(pos, magic)
		if err != nil {
			return Record{}, err
		}
		if info&xlpFirstIsContrecord != 0 {
			return Record{}, &RecordError{At: pos, Reason: "page claims a continuation where a record starts"}
		}
		pos += pageHeaderLen(pos, w.id.SegmentSize)
	}
	start := pos
	incomplete := &RecordError{At: start, Reason: "record not complete", Incomplete: true}
	// The header is gathered (it may be split across pages); the rest is
	// only checksummed, piece by piece, never copied.
	var hdr [recordHeaderLen]byte
	var got uint32 // bytes of the record seen, page headers excluded
	var totLen uint32
	var crc uint32
	for {
		if pos >= w.end() {
			return Record{}, incomplete
		}
		onPage := LSN(PageSize) - LSN(uint64(pos)%PageSize)
		need := uint32(recordHeaderLen)
		if got >= 4 {
			need = totLen
		}
		take := min(LSN(need-got), onPage, w.end()-pos)
		piece := w.at(pos)[:take]
		if got < recordHeaderLen {
			n := copy(hdr[got:], piece)
			crc = crc32.Update(crc, castagnoli, piece[n:])
		} else {
			crc = crc32.Update(crc, castagnoli, piece)
		}
		before := got
		got += uint32(take)
		pos += take
		if before < 4 && got >= 4 {
			// Records are 8-aligned, so xl_tot_len is always on the
			// record's first page.
			totLen = binary.LittleEndian.Uint32(hdr[:])
			if totLen == 0 && allZero(hdr[:4]) {
				// Zeros where a record would start: the WAL ends here.
				return Record{}, &RecordError{At: start, Reason: "invalid record length 0", Incomplete: true}
			}
			if totLen < recordHeaderLen || totLen > maxRecordLen {
				return Record{}, &RecordError{At: start, Reason: fmt.Sprintf("invalid record length %d", totLen)}
			}
		}
		if before < recordHeaderLen && got >= recordHeaderLen {
			if p := LSN(binary.LittleEndian.Uint64(hdr[recordPrevOffset:])); prev != 0 && p != prev {
				return Record{}, &RecordError{At: start, Reason: fmt.Sprintf("record with incorrect prev-link %s (want %s)", p, prev)}
			}
		}
		if got >= 4 && got == totLen {
			break
		}
		if uint64(pos)%PageSize != 0 {
			continue // more of this page (the length was just learnt), or the bytes ran out
		}
		// On to the next page, whose header says how much of the record
		// is left.
		info, remLen, err := w.checkPageAt(pos, magic)
		if err != nil {
			if re, ok := err.(*RecordError); ok && re.Incomplete {
				return Record{}, incomplete
			}
			return Record{}, &RecordError{At: start, Reason: err.Error()}
		}
		if info&xlpFirstIsContrecord == 0 {
			return Record{}, &RecordError{At: start, Reason: fmt.Sprintf("there is no contrecord flag on page %s", pos)}
		}
		if left := totLen - got; remLen != left {
			return Record{}, &RecordError{At: start, Reason: fmt.Sprintf("invalid contrecord length %d on page %s (expected %d)", remLen, pos, left)}
		}
		pos += pageHeaderLen(pos, w.id.SegmentSize)
	}
	crc = crc32.Update(crc, castagnoli, hdr[:recordCRCOffset])
	if want := binary.LittleEndian.Uint32(hdr[recordCRCOffset:]); crc != want {
		return Record{}, &RecordError{At: start, Reason: fmt.Sprintf("incorrect resource manager data checksum (%08X, the record has %08X)", crc, want)}
	}
	return Record{
		Start:  start,
		End:    pos,
		Switch: hdr[recordRmidOffset] == rmXLOG && hdr[recordInfoOffset]&^xlrInfoMask == xlogSwitch,
	}, nil
}

// scanRecords validates records from first (a record start whose
// predecessor starts at prev, 0 when unknown) to the end of the span. It
// stops at the first record that is invalid or not complete and says why in
// stop; an XLOG_SWITCH ends the scan (the rest of its segment is padding).
func (w walSpan) scanRecords(first, prev LSN) (recs []Record, stop error) {
	pos := first
	for pos < w.end() {
		var magic uint16 // 0 accepts any: the segment's first page is not held
		if seg := pos.SegmentStart(w.id.SegmentSize); seg >= w.base {
			if h, ok := parsePageHeader(w.at(seg)); ok {
				magic = h.Magic
			}
		}
		r, err := w.readRecord(pos, prev, magic)
		if err != nil {
			return recs, err
		}
		recs = append(recs, r)
		if r.Switch {
			return recs, nil
		}
		prev, pos = r.Start, alignUp(r.End)
	}
	return recs, nil
}

// ScanSegment validates the records that start in a segment's bytes: data
// holds the segment from its first byte (segStart), possibly only a prefix.
// A record the segment begins inside of is not among them. stop says why
// the scan ended before the data did; a *RecordError with Incomplete set
// means only that the last record's end is not in data yet.
func ScanSegment(data []byte, segStart LSN, id Identity) (recs []Record, stop error) {
	w := walSpan{data: data, base: segStart, id: id}
	first, ok, err := w.firstRecord(segStart)
	if err != nil || !ok {
		return nil, err
	}
	return w.scanRecords(first, 0)
}

// recoveredTail is what validating a segment's tail found: valid bytes end
// on the last whole record.
type recoveredTail struct {
	valid int
	// nextEnd is where the record after the valid ones would end by its
	// length field, when one starts there (0: zeros, or not readable).
	nextEnd LSN
	why     string // what invalid bytes ended the WAL; "" when it just ends
}

// claimedEnd is where a record starting at start with length totLen ends,
// counting the page headers it crosses.
func claimedEnd(start LSN, totLen uint32, segSize uint64) LSN {
	pos, left := start, LSN(totLen)
	for {
		onPage := LSN(PageSize) - LSN(uint64(pos)%PageSize)
		if left <= onPage {
			return pos + left
		}
		left -= onPage
		pos += onPage
		pos += pageHeaderLen(pos, segSize)
	}
}

// validRecordEnd validates a segment's data (from its first byte) record by
// record and says where the WAL it can vouch for ends: what recovery keeps.
// prevSeg, when not nil, is the complete segment before it (same history):
// it lets the record the segment begins inside of be validated as a whole.
// Without it that continuation is checked by its page headers only, as a
// reader starting at this segment would do.
func validRecordEnd(data, prevSeg []byte, segStart LSN, id Identity) recoveredTail {
	w := walSpan{data: data, base: segStart, id: id}
	tail := func(end LSN, stop error) recoveredTail {
		t := recoveredTail{valid: int(end - segStart), why: reason(stop)}
		next := alignUp(end)
		if uint64(next)%PageSize == 0 {
			next += pageHeaderLen(next, id.SegmentSize)
		}
		if end > segStart && next+4 <= w.end() {
			if l := binary.LittleEndian.Uint32(w.at(next)); l >= recordHeaderLen && l <= maxRecordLen {
				t.nextEnd = claimedEnd(next, l, id.SegmentSize)
			}
		}
		return t
	}
	info, _, err := w.checkPageAt(segStart, 0)
	if err != nil {
		return tail(segStart, err)
	}
	var recs []Record
	var stop error
	if info&xlpFirstIsContrecord != 0 && prevSeg != nil {
		// Validate from the record that crosses into this segment: the one
		// left incomplete at the end of the segment before.
		pw := walSpan{data: prevSeg, base: segStart - LSN(len(prevSeg)), id: id}
		if first, ok, err := pw.firstRecord(pw.base); err == nil && ok {
			prev, st := pw.scanRecords(first, 0)
			if re, ok := st.(*RecordError); ok && re.Incomplete && re.At < segStart {
				var prevStart LSN
				if len(prev) > 0 {
					prevStart = prev[len(prev)-1].Start
				}
				from := prevSeg[re.At-pw.base:]
				cw := walSpan{data: append(append(make([]byte, 0, len(from)+len(data)), from...), data...), base: re.At, id: id}
				recs, stop = cw.scanRecords(re.At, prevStart)
				if len(recs) == 0 {
					// The record crossing into this segment is not whole:
					// nothing of this segment can be kept.
					return tail(segStart, stop)
				}
			}
		}
	}
	end := segStart
	if recs == nil {
		first, ok, err := w.firstRecord(segStart)
		if err != nil {
			return tail(segStart, err)
		}
		if !ok {
			return tail(segStart, &RecordError{At: segStart, Reason: "continuation not complete", Incomplete: true})
		}
		if first > segStart+longPageHeaderLen {
			end = first // a continuation checked by its page headers
		}
		recs, stop = w.scanRecords(first, 0)
	}
	if len(recs) > 0 {
		end = max(end, recs[len(recs)-1].End)
	}
	return tail(end, stop)
}

// reason is why a scan stopped, "" when the WAL just ends there.
func reason(err error) string {
	if err == nil {
		return ""
	}
	if re, ok := err.(*RecordError); ok && re.Incomplete {
		return ""
	}
	return err.Error()
}

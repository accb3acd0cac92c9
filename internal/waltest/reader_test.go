package waltest

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
)

// walReader checks WAL the way PostgreSQL's xlogreader reads it
// (XLogReaderValidatePageHeader, XLogReadRecord, ValidXLogRecordHeader,
// ValidXLogRecord, DecodeXLogRecord), written from the format rather than
// from the generator so that the two can disagree.
type walReader struct {
	sysID, segSize uint64
	tli            uint32
	wal            []byte
	base           uint64 // LSN of wal[0], a segment start
	// What it met, so tests can see that the hard cases occurred.
	crossPage, threePages, splitHeader, endsAtPage int
}

const anyPrev = ^uint64(0)

// readAll walks every record of r.wal, which must end at a record's end.
// prev is the xl_prev the first record must carry, or anyPrev.
func (r *walReader) readAll(prev uint64) ([]Record, error) {
	var recs []Record
	end := r.base + uint64(len(r.wal))
	for pos := r.base; pos < end; {
		if pos%pageSize == 0 {
			n, err := r.pageHeader(pos, 0)
			if err != nil {
				return recs, err
			}
			pos += n
		}
		rec, err := r.record(pos, prev)
		if err != nil {
			return recs, err
		}
		recs = append(recs, rec)
		prev, pos = rec.Start, (rec.End+7)&^7
	}
	return recs, nil
}

// pageHeader checks the header of the page at LSN page and returns its
// length. rem is the number of bytes of a record still to come, 0 if none.
func (r *walReader) pageHeader(page uint64, rem uint32) (uint64, error) {
	if page+shortHeaderLen > r.base+uint64(len(r.wal)) {
		return 0, fmt.Errorf("page %#x: header cut off", page)
	}
	p := r.wal[page-r.base:]
	info := binary.LittleEndian.Uint16(p[2:])
	switch {
	case binary.LittleEndian.Uint16(p) != Magic:
		return 0, fmt.Errorf("page %#x: magic %#x", page, binary.LittleEndian.Uint16(p))
	case info&^(xlpFirstIsContrecord|xlpLongHeader) != 0:
		return 0, fmt.Errorf("page %#x: xlp_info %#x", page, info)
	case binary.LittleEndian.Uint32(p[4:]) != r.tli:
		return 0, fmt.Errorf("page %#x: timeline %d", page, binary.LittleEndian.Uint32(p[4:]))
	case binary.LittleEndian.Uint64(p[8:]) != page:
		return 0, fmt.Errorf("page %#x: xlp_pageaddr %#x", page, binary.LittleEndian.Uint64(p[8:]))
	case !bytes.Equal(p[20:24], make([]byte, 4)):
		return 0, fmt.Errorf("page %#x: padding % x", page, p[20:24])
	}
	n := uint64(shortHeaderLen)
	if long := page%r.segSize == 0; long != (info&xlpLongHeader != 0) {
		return 0, fmt.Errorf("page %#x: xlp_info %#x at segment offset %d", page, info, page%r.segSize)
	} else if long {
		sys, seg, blck := binary.LittleEndian.Uint64(p[24:]), binary.LittleEndian.Uint32(p[32:]), binary.LittleEndian.Uint32(p[36:])
		if sys != r.sysID || uint64(seg) != r.segSize || blck != pageSize {
			return 0, fmt.Errorf("page %#x: long header %d %d %d", page, sys, seg, blck)
		}
		n = longHeaderLen
	}
	got := binary.LittleEndian.Uint32(p[16:])
	if cont := info&xlpFirstIsContrecord != 0; cont != (rem > 0) || got != rem {
		return 0, fmt.Errorf("page %#x: contrecord %v xlp_rem_len %d, want %d bytes to come", page, cont, got, rem)
	}
	return n, nil
}

// record checks the record at pos and returns where it lies.
func (r *walReader) record(pos, prev uint64) (Record, error) {
	end := r.base + uint64(len(r.wal))
	if pos%8 != 0 || pos+4 > end {
		return Record{}, fmt.Errorf("record at %#x: misaligned or cut off", pos)
	}
	totLen := binary.LittleEndian.Uint32(r.wal[pos-r.base:])
	if totLen < recordHeadLen {
		return Record{}, fmt.Errorf("record at %#x: xl_tot_len %d", pos, totLen)
	}
	rec := make([]byte, 0, totLen)
	p, pages := pos, 1
	for uint32(len(rec)) < totLen {
		if p%pageSize == 0 {
			n, err := r.pageHeader(p, totLen-uint32(len(rec)))
			if err != nil {
				return Record{}, fmt.Errorf("record at %#x: %w", pos, err)
			}
			p += n
			pages++
		}
		k := min(uint64(totLen)-uint64(len(rec)), pageSize-p%pageSize)
		if p+k > end {
			return Record{}, fmt.Errorf("record at %#x: cut off", pos)
		}
		rec = append(rec, r.wal[p-r.base:p-r.base+k]...)
		p += k
	}
	aligned := (p + 7) &^ 7
	if aligned > end || !bytes.Equal(r.wal[p-r.base:aligned-r.base], make([]byte, aligned-p)) {
		return Record{}, fmt.Errorf("record at %#x: padding not zeros", pos)
	}
	if err := checkRecord(rec, prev); err != nil {
		return Record{}, fmt.Errorf("record at %#x: %w", pos, err)
	}
	if pages > 1 {
		r.crossPage++
	}
	if pages > 2 {
		r.threePages++
	}
	if pageSize-pos%pageSize < recordHeadLen {
		r.splitHeader++
	}
	if aligned%pageSize == 0 && aligned%r.segSize != 0 {
		r.endsAtPage++
	}
	return Record{Start: pos, End: p, Len: totLen}, nil
}

// checkRecord checks the gathered bytes of one record.
func checkRecord(rec []byte, prev uint64) error {
	tab := crc32.MakeTable(crc32.Castagnoli)
	h, body := rec[:recordHeadLen], rec[recordHeadLen:]
	if got := binary.LittleEndian.Uint64(h[8:]); prev != anyPrev && got != prev {
		return fmt.Errorf("xl_prev %#x, want %#x", got, prev)
	}
	if h[16] != xlogNoop || h[17] != rmXLOGID || binary.LittleEndian.Uint32(h[4:]) != 0 {
		return fmt.Errorf("xl_xid %d xl_info %#x xl_rmid %d", binary.LittleEndian.Uint32(h[4:]), h[16], h[17])
	}
	crc := crc32.Checksum(body, tab)
	crc = crc32.Update(crc, tab, h[:20])
	if got := binary.LittleEndian.Uint32(h[20:]); got != crc {
		return fmt.Errorf("xl_crc %#08x, computed %#08x", got, crc)
	}
	// DecodeXLogRecord: main data only.
	switch {
	case len(body) == 0:
	case body[0] == blockIDDataShort && len(body) >= 2 && int(body[1]) == len(body)-2:
	case body[0] == blockIDDataLong && len(body) >= 5 && int(binary.LittleEndian.Uint32(body[1:])) == len(body)-5:
	default:
		return fmt.Errorf("body of %d bytes does not decode: % x", len(body), body[:min(len(body), 5)])
	}
	return nil
}

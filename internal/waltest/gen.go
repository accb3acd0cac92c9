package waltest

import (
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"slices"
	"sort"
)

const (
	pageSize = 8192
	// Magic is the page magic the generator writes (PostgreSQL 15's).
	Magic = 0xD110

	xlpFirstIsContrecord = 0x0001
	xlpLongHeader        = 0x0002
	rmXLOGID             = 0    // RM_XLOG_ID
	xlogNoop             = 0x20 // XLOG_NOOP
	blockIDDataShort     = 255  // XLR_BLOCK_ID_DATA_SHORT
	blockIDDataLong      = 254  // XLR_BLOCK_ID_DATA_LONG
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Generate returns the WAL bytes of [start, start+n) for a cluster with the
// given system id, segment size and timeline, in the format and layout the
// package doc describes. The same arguments always give the same bytes, and
// any sub-range equals the matching slice of a larger range. segSize must be
// a multiple of 8192 up to 1 GiB.
func Generate(sysID, segSize uint64, tli uint32, start uint64, n int) []byte {
	checkSegSize(segSize)
	w := window{out: make([]byte, max(n, 0)), at: start}
	end := start + uint64(len(w.out))
	var rec []byte
	for seg := start / segSize; seg*segSize < end; seg++ {
		l := layoutOf(sysID, segSize, seg)
		lo, hi := max(start, l.base), min(end, l.base+segSize)
		for page := lo / pageSize * pageSize; page < hi; page += pageSize {
			w.put(page, l.pageHeader(sysID, segSize, tli, page))
		}
		prev := firstPrev(sysID, segSize, seg)
		for i := l.firstEndingAfter(lo); i < len(l.starts) && l.start(i) < hi; i++ {
			if i > 0 {
				prev = l.start(i - 1)
			}
			rec = l.record(rec, sysID, i, prev)
			l.scatter(w, l.starts[i], rec)
		}
	}
	return w.out
}

// window is the part of the stream Generate returns.
type window struct {
	out []byte
	at  uint64 // LSN of out[0]
}

// put copies the part of b, the bytes at LSN lsn, that falls in the window.
func (w window) put(lsn uint64, b []byte) {
	lo := max(lsn, w.at)
	hi := min(lsn+uint64(len(b)), w.at+uint64(len(w.out)))
	if lo < hi {
		copy(w.out[lo-w.at:hi-w.at], b[lo-lsn:hi-lsn])
	}
}

// scatter puts record bytes b, which start at data offset d, around the page
// headers they cross.
func (l *layout) scatter(w window, d uint32, b []byte) {
	for len(b) > 0 {
		lsn := l.lsn(d)
		k := min(uint64(len(b)), pageSize-lsn%pageSize)
		w.put(lsn, b[:k])
		d += uint32(k)
		b = b[k:]
	}
}

// pageHeader returns the header of the page at LSN page, which is in l's
// segment.
func (l *layout) pageHeader(sysID, segSize uint64, tli uint32, page uint64) []byte {
	h := make([]byte, shortHeaderLen, longHeaderLen)
	var info uint16
	var rem uint32
	k := (page - l.base) / pageSize
	if k == 0 {
		info |= xlpLongHeader
		h = h[:longHeaderLen]
		binary.LittleEndian.PutUint64(h[24:], sysID)
		binary.LittleEndian.PutUint32(h[32:], uint32(segSize))
		binary.LittleEndian.PutUint32(h[36:], pageSize)
	} else {
		// The record that starts before the page's data, if it reaches into it.
		d := pageDataStart(k)
		i := sort.Search(len(l.starts), func(i int) bool { return l.starts[i] >= d }) - 1
		if end := l.starts[i] + l.lens[i]; end > d {
			info |= xlpFirstIsContrecord
			rem = end - d
		}
	}
	binary.LittleEndian.PutUint16(h[0:], Magic)
	binary.LittleEndian.PutUint16(h[2:], info)
	binary.LittleEndian.PutUint32(h[4:], tli)
	binary.LittleEndian.PutUint64(h[8:], page)
	binary.LittleEndian.PutUint32(h[16:], rem)
	return h
}

// record returns record i, header and body, in buf's storage.
func (l *layout) record(buf []byte, sysID uint64, i int, prev uint64) []byte {
	n := int(l.lens[i])
	buf = slices.Grow(buf[:0], n)[:n]
	body := buf[recordHeadLen:]
	// Lengths are at least 40 except a segment's last, a multiple of 8 of
	// at least 24: a body is empty or has room for its block header.
	switch {
	case len(body) == 0:
	case len(body)-2 <= 255:
		body[0] = blockIDDataShort
		body[1] = byte(len(body) - 2)
		fillPayload(body[2:], l.start(i), sysID)
	default:
		body[0] = blockIDDataLong
		binary.LittleEndian.PutUint32(body[1:], uint32(len(body)-5))
		fillPayload(body[5:], l.start(i), sysID)
	}
	h := buf[:recordHeadLen]
	binary.LittleEndian.PutUint32(h[0:], uint32(n))
	binary.LittleEndian.PutUint32(h[4:], 0)
	binary.LittleEndian.PutUint64(h[8:], prev)
	h[16] = xlogNoop
	h[17] = rmXLOGID
	h[18], h[19] = 0, 0
	crc := crc32.Update(crc32.Checksum(body, castagnoli), castagnoli, h[:20])
	binary.LittleEndian.PutUint32(h[20:], crc)
	return buf
}

// fillPayload writes runs of a few repeated byte values, compressible like
// real WAL, seeded by the record's LSN.
func fillPayload(b []byte, lsn, sysID uint64) {
	r := rand.New(rand.NewPCG(lsn, sysID))
	for i := 0; i < len(b); {
		run := 1 + r.IntN(16)
		v := byte(r.IntN(8))
		for j := 0; j < run && i < len(b); j++ {
			b[i] = v
			i++
		}
	}
}

package walstream

import (
	"encoding/binary"
	"fmt"
)

// WAL page header layout (XLogPageHeaderData, XLogLongPageHeaderData in
// PostgreSQL's xlog_internal.h). All fields are in the server's byte order;
// walrelay only supports little-endian servers, which is every platform
// PostgreSQL ships binaries for today.
const (
	pageMagicOffset    = 0  // uint16 xlp_magic
	pageInfoOffset     = 2  // uint16 xlp_info
	pageTLIOffset      = 4  // uint32 xlp_tli
	pageAddrOffset     = 8  // uint64 xlp_pageaddr
	shortPageHeaderLen = 24 // MAXALIGN(SizeOfXLogShortPHD)
	longSysIDOffset    = 24 // uint64 xlp_sysid
	longSegSizeOffset  = 32 // uint32 xlp_seg_size
	longPageHeaderLen  = 40 // MAXALIGN(SizeOfXLogLongPHD)
	xlpLongHeader      = 0x0002
)

// pageHeader is the part of a WAL page header walrelay checks.
type pageHeader struct {
	Magic    uint16
	Info     uint16
	TLI      TimeLineID
	PageAddr LSN
	// Set only on a segment's first page (long header).
	SysID   uint64
	SegSize uint32
}

// parsePageHeader decodes the header at the start of page. ok is false when
// page is too short to hold it.
func parsePageHeader(page []byte) (h pageHeader, ok bool) {
	if len(page) < shortPageHeaderLen {
		return h, false
	}
	h.Magic = binary.LittleEndian.Uint16(page[pageMagicOffset:])
	h.Info = binary.LittleEndian.Uint16(page[pageInfoOffset:])
	h.TLI = TimeLineID(binary.LittleEndian.Uint32(page[pageTLIOffset:]))
	h.PageAddr = LSN(binary.LittleEndian.Uint64(page[pageAddrOffset:]))
	if h.Info&xlpLongHeader != 0 {
		if len(page) < longPageHeaderLen {
			return h, false
		}
		h.SysID = binary.LittleEndian.Uint64(page[longSysIDOffset:])
		h.SegSize = binary.LittleEndian.Uint32(page[longSegSizeOffset:])
	}
	return h, true
}

// checkPage verifies that page (possibly a prefix of a page) carries a valid
// header for position addr. magic is the magic of the segment's first page;
// zero accepts any.
func checkPage(page []byte, addr LSN, magic uint16, id Identity) error {
	h, ok := parsePageHeader(page)
	if !ok {
		return fmt.Errorf("page %s: header incomplete (%d bytes)", addr, len(page))
	}
	if magic != 0 && h.Magic != magic {
		return fmt.Errorf("page %s: magic %#04x, want %#04x", addr, h.Magic, magic)
	}
	if h.PageAddr != addr {
		return fmt.Errorf("page %s: header says %s", addr, h.PageAddr)
	}
	if addr.SegmentOffset(id.SegmentSize) == 0 {
		if h.Info&xlpLongHeader == 0 {
			return fmt.Errorf("page %s: segment start without long header", addr)
		}
		if h.SysID != id.SystemID || uint64(h.SegSize) != id.SegmentSize {
			return fmt.Errorf("page %s: system id %d segment size %d, store has %d and %d",
				addr, h.SysID, h.SegSize, id.SystemID, id.SegmentSize)
		}
	}
	return nil
}

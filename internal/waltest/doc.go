// Package waltest makes synthetic WAL for tests and benchmarks: a stream of
// valid PostgreSQL 15 records on valid pages, the same bytes every time, so
// that anything checking WAL the way PostgreSQL's xlogreader does accepts it.
//
// # Format
//
// All integers are little-endian. Pages are 8192 bytes and start with
// XLogPageHeaderData (xlog_internal.h):
//
//	0  uint16 xlp_magic     Magic (0xD110, PostgreSQL 15)
//	2  uint16 xlp_info      0x0002 XLP_LONG_HEADER on a segment's first page,
//	                        0x0001 XLP_FIRST_IS_CONTRECORD when the page
//	                        begins with the rest of a record
//	4  uint32 xlp_tli       the timeline passed to Generate
//	8  uint64 xlp_pageaddr  the page's LSN
//	16 uint32 xlp_rem_len   bytes of that record still to come, counted
//	                        from this page on without page headers; else 0
//	20 4 bytes padding                              (short header: 24 bytes)
//	24 uint64 xlp_sysid     long header only
//	32 uint32 xlp_seg_size
//	36 uint32 xlp_xlog_blcksz (8192)                (long header: 40 bytes)
//
// Records (XLogRecord, xlogrecord.h) start at 8-aligned LSNs; the bytes from
// a record's end to the next 8-aligned LSN are zeros. A record continues
// after the header of the next page when it does not fit on its own, so its
// header may be split too:
//
//	0  uint32 xl_tot_len  header and body, without the page headers crossed
//	4  uint32 xl_xid      0
//	8  uint64 xl_prev     the LSN of the previous record
//	16 uint8  xl_info     0x20 (XLOG_NOOP)
//	17 uint8  xl_rmid     0 (RM_XLOG_ID)
//	18 2 bytes padding
//	20 uint32 xl_crc      CRC-32C of the body, then of header bytes [0, 20)
//	24 body               main data as DecodeXLogRecord reads it: 0xFF
//	                      (XLR_BLOCK_ID_DATA_SHORT) and a uint8 length, or
//	                      0xFE (XLR_BLOCK_ID_DATA_LONG) and a uint32 length,
//	                      then that many bytes of compressible payload;
//	                      a 24-byte record has no body
//
// Record lengths are pseudo-random: mostly 40 to 400 bytes, about a fifth up
// to 8000, a few up to 24000 so that some records span three or four pages.
//
// # Layout
//
// The records of a segment depend only on the system id, the segment size
// and the segment number, never on the range asked for, which is what makes
// every range a slice of any larger one. A segment's first record starts
// right after its long header (no record crosses a segment boundary) and its
// last record is sized to end exactly at the segment's end. The first
// record's xl_prev is the start of the previous segment's last record (0 in
// segment 0). Record bodies are seeded by the record's LSN.
//
// The timeline appears only in page headers: the same LSN on timelines 1
// and 2 holds the same records, as after a promotion, where the new
// timeline's copy of the switch segment repeats the old timeline's records.
//
// A record's End, as Records and RecordEndAtOrBefore report it, is the LSN
// after its last byte, page headers it crosses included and padding
// excluded (as walstream.Record's). Rounded up to 8 it is PostgreSQL's
// EndRecPtr, what XLogInsert returns and a walsender reports as flushed; the
// next record starts there, or after the page header when that is a page
// boundary. A segment's last record has no padding: its End is the
// segment's end.
package waltest

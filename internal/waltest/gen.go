// Package waltest makes synthetic WAL for tests and benchmarks: bytes that
// carry valid page headers (so the store's recovery accepts them) around a
// deterministic payload.
package waltest

import (
	"encoding/binary"
	"math/rand/v2"
)

const (
	pageSize = 8192
	// Magic is the page magic the generator writes (PostgreSQL 15's).
	Magic = 0xD110
)

// Generate returns the WAL bytes of [start, start+n) for a cluster with the
// given system id, segment size and timeline. The same arguments always give
// the same bytes, and any sub-range equals the matching slice of a larger
// range.
func Generate(sysID, segSize uint64, tli uint32, start uint64, n int) []byte {
	out := make([]byte, n)
	firstPage := start / pageSize * pageSize
	for page := firstPage; page < start+uint64(n); page += pageSize {
		buf := makePage(sysID, segSize, tli, page)
		lo := max(page, start)
		hi := min(page+pageSize, start+uint64(n))
		copy(out[lo-start:hi-start], buf[lo-page:hi-page])
	}
	return out
}

func makePage(sysID, segSize uint64, tli uint32, addr uint64) []byte {
	buf := make([]byte, pageSize)
	r := rand.New(rand.NewPCG(addr, sysID))
	// Payload: runs of a few repeated bytes, compressible like real WAL.
	for i := 0; i < len(buf); {
		run := 1 + r.IntN(16)
		b := byte(r.IntN(8))
		for j := 0; j < run && i < len(buf); j++ {
			buf[i] = b
			i++
		}
	}
	binary.LittleEndian.PutUint16(buf[0:], Magic)
	info := uint16(0)
	if addr%segSize == 0 {
		info = 0x0002
	}
	binary.LittleEndian.PutUint16(buf[2:], info)
	binary.LittleEndian.PutUint32(buf[4:], tli)
	binary.LittleEndian.PutUint64(buf[8:], addr)
	binary.LittleEndian.PutUint32(buf[16:], 0)
	if info != 0 {
		binary.LittleEndian.PutUint64(buf[24:], sysID)
		binary.LittleEndian.PutUint32(buf[32:], uint32(segSize))
		binary.LittleEndian.PutUint32(buf[36:], pageSize)
	}
	return buf
}

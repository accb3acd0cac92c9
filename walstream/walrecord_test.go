package walstream

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Real WAL of PostgreSQL 15 (testdata/wal): segment 4 whole, the first 64
// KiB of segment 5, which begins inside a 40 kB record, and records.txt,
// pg_waldump's list of every record in them (start, xl_tot_len, xl_prev).
const (
	realSysID = 7715088673436130455
	realSeg   = 16 << 20
	realSeg4  = LSN(0x4000000)
	realSeg5  = LSN(0x5000000)
	realEnd   = LSN(0x500C13A) // the end of the last record (a commit at 0/500C118)
	// The end of the 40057-byte record at 0/4FFC798 that crosses into
	// segment 5 (pg_waldump's next record starts at 0/50064A0).
	realCrossEnd = LSN(0x500649B)
)

var realID = Identity{SystemID: realSysID, SegmentSize: realSeg}

func readGz(t testing.TB, name string) []byte {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "wal", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// waldumpStarts is pg_waldump's record starts in [from, to).
func waldumpStarts(t testing.TB, from, to LSN) []LSN {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", "wal", "records.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []LSN
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l, err := ParseLSN(strings.Fields(sc.Text())[0])
		if err != nil {
			t.Fatal(err)
		}
		if l >= from && l < to {
			out = append(out, l)
		}
	}
	return out
}

func starts(recs []Record) []LSN {
	var out []LSN
	for _, r := range recs {
		out = append(out, r.Start)
	}
	return out
}

func equalLSNs(a, b []LSN) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The scanner finds exactly the records pg_waldump finds, in a segment that
// begins with a record and in one that begins inside one.
func TestScanSegmentMatchesWaldump(t *testing.T) {
	seg4, seg5 := readGz(t, "000000010000000000000004.gz"), readGz(t, "000000010000000000000005.head.gz")
	recs, stop := ScanSegment(seg4, realSeg4, realID)
	// The last record starting in segment 4 continues into segment 5: it
	// is not whole in segment 4 alone.
	want := waldumpStarts(t, realSeg4, realSeg5)
	if !equalLSNs(starts(recs), want[:len(want)-1]) {
		t.Fatalf("segment 4: %d records, pg_waldump has %d (stop: %v)", len(recs), len(want), stop)
	}
	if re, ok := stop.(*RecordError); !ok || !re.Incomplete || re.At != want[len(want)-1] {
		t.Errorf("segment 4 alone should end inside the record at %s, stop = %v", want[len(want)-1], stop)
	}
	recs, stop = ScanSegment(seg5, realSeg5, realID)
	if want := waldumpStarts(t, realSeg5, realSeg5+realSeg); !equalLSNs(starts(recs), want) {
		t.Fatalf("segment 5: records %v, pg_waldump %v (stop: %v)", starts(recs), want, stop)
	}
	if recs[len(recs)-1].End != realEnd {
		t.Errorf("segment 5's last record ends at %s, want %s", recs[len(recs)-1].End, realEnd)
	}
	if reason(stop) != "" {
		t.Errorf("segment 5 ends in zeros, stop = %v", stop)
	}
}

// recordAt is the record starting at lsn in recs.
func recordAt(t *testing.T, recs []Record, pred func(Record) bool) Record {
	t.Helper()
	for _, r := range recs {
		if pred(r) {
			return r
		}
	}
	t.Fatal("no such record")
	return Record{}
}

// Damage of the kinds a power loss leaves cuts the WAL at the end of the
// last whole record before it, never after.
func TestValidRecordEndCutsDamage(t *testing.T) {
	seg4, seg5 := readGz(t, "000000010000000000000004.gz"), readGz(t, "000000010000000000000005.head.gz")
	recs, _ := ScanSegment(seg5, realSeg5, realID)
	off := func(l LSN) int { return int(l - realSeg5) }
	last := recs[len(recs)-1]
	// A record of segment 5 that crosses a page boundary.
	spanning := recordAt(t, recs, func(r Record) bool { return uint64(r.Start)/PageSize != uint64(r.End-1)/PageSize })
	before := func(r Record) int {
		for i := range recs {
			if recs[i] == r {
				return off(recs[i-1].End)
			}
		}
		t.Fatal("no record before")
		return 0
	}
	cases := []struct {
		name   string
		damage func(b []byte)
		prev   bool
		want   int
		why    bool // the cut is reported as damage, not as WAL that ends (zeros)
	}{
		{"intact", func(b []byte) {}, true, off(realEnd), false},
		{"intact, no segment before", func(b []byte) {}, false, off(realEnd), false},
		{"zeros inside the last record", func(b []byte) { clear(b[off(last.Start)+26 : off(last.Start)+30]) }, true, before(last), true},
		{"garbage in the last record", func(b []byte) { b[off(last.End)-1] ^= 0x55 }, true, before(last), true},
		{"last page zeroed from inside a record", func(b []byte) {
			pg := int(uint64(off(last.Start)) / PageSize * PageSize)
			clear(b[off(last.Start)+8 : pg+PageSize])
		}, true, before(last), true},
		{"torn record spanning two pages: second page zeroed", func(b []byte) {
			pg := int(uint64(off(spanning.End-1)) / PageSize * PageSize)
			clear(b[pg : pg+PageSize])
		}, true, before(spanning), false}, // zeros: as if never written
		{"torn record spanning two pages: second page stale", func(b []byte) {
			// The second page's header is intact, its data from an older
			// write: the CRC catches it.
			pg := int(uint64(off(spanning.End-1)) / PageSize * PageSize)
			for i := pg + shortPageHeaderLen; i < off(spanning.End); i++ {
				b[i] = byte(i)
			}
		}, true, before(spanning), true},
		{"torn record: 512-byte sector of zeros", func(b []byte) {
			s := (off(spanning.Start) + 512) / 512 * 512
			clear(b[s : s+512])
		}, true, before(spanning), false},
		{"wrong prev-link with a valid CRC", func(b []byte) {
			r := b[off(last.Start):off(last.End)]
			binary.LittleEndian.PutUint64(r[recordPrevOffset:], 0x500C000)
			crc := crc32.Checksum(r[recordHeaderLen:], castagnoli)
			binary.LittleEndian.PutUint32(r[recordCRCOffset:], crc32.Update(crc, castagnoli, r[:recordCRCOffset]))
		}, true, before(last), true},
		{"the continuation of the record from segment 4 damaged", func(b []byte) { b[longPageHeaderLen+100] ^= 1 }, true, 0, true},
		{"only the beginning of the file was written", func(b []byte) { clear(b[longPageHeaderLen+10:]) }, true, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := bytes.Clone(seg5)
			c.damage(b)
			var prev []byte
			if c.prev {
				prev = seg4
			}
			rt := validRecordEnd(b, prev, realSeg5, realID)
			got, why := rt.valid, rt.why
			if got != c.want {
				t.Errorf("valid end %s, want %s (why %q)", realSeg5+LSN(got), realSeg5+LSN(c.want), why)
			}
			if (why != "") != c.why {
				t.Errorf("why = %q, want a reason: %v", why, c.why)
			}
		})
	}
}

// The segment before is validated up to the continuation: a whole segment 4
// followed by any prefix of segment 5 keeps exactly the records that end in
// the prefix.
func TestValidRecordEndEveryPrefix(t *testing.T) {
	seg4, seg5 := readGz(t, "000000010000000000000004.gz"), readGz(t, "000000010000000000000005.head.gz")
	recs, _ := ScanSegment(seg5, realSeg5, realID)
	// The record from segment 4 ends in segment 5 at the first record's
	// start, less its padding.
	var prefixes []int
	for n := 0; n <= int(realEnd-realSeg5)+64; n += 1009 {
		prefixes = append(prefixes, n)
	}
	for pg := PageSize; pg < int(realEnd-realSeg5); pg += PageSize {
		prefixes = append(prefixes, pg-1, pg, pg+1, pg+shortPageHeaderLen, pg+shortPageHeaderLen+8)
	}
	for _, r := range recs {
		prefixes = append(prefixes, int(r.End-realSeg5)-1, int(r.End-realSeg5))
	}
	for _, n := range prefixes {
		want := LSN(0)
		for _, r := range recs {
			if r.End <= realSeg5+LSN(n) {
				want = r.End
			}
		}
		if want == 0 && n >= int(realCrossEnd-realSeg5) {
			want = realCrossEnd
		}
		got := validRecordEnd(seg5[:n], seg4, realSeg5, realID).valid
		if want == 0 {
			if got != 0 {
				t.Fatalf("prefix %d: valid end %s inside the record crossing from segment 4", n, realSeg5+LSN(got))
			}
			continue
		}
		if realSeg5+LSN(got) != want {
			t.Fatalf("prefix %d: valid end %s, want %s", n, realSeg5+LSN(got), want)
		}
	}
}

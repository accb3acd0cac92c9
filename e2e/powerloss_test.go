package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/walstream"
)

// expectLostAckLog: damage to WAL the relay had acknowledged to its parent
// (the parent's slot restart_lsn is past it) is also reported at ERROR.
const expectLostAckLog = true

const (
	shortPageHeader = 24 // XLogPageHeaderData, every page but a segment's first
	longPageHeader  = 40 // XLogLongPageHeaderData, a segment's first page
	recordHeader    = 24 // XLogRecord
)

// tailDamage is bytes [Off, Off+len(New)) of a segment overwritten with New,
// landing inside record Victim of the records scanned in it.
type tailDamage struct {
	Victim int
	Off    int
	New    []byte
}

// A power loss leaves the newest segment of the relay's store with a
// damaged tail: zeros or stale bytes inside a page, or a record torn at a
// page boundary. For each kind the relay is SIGKILLed, the damage is put
// into WAL it had stored, served and acknowledged, and it is restarted: it
// cuts after the last valid record before the damage (not earlier), says so,
// fetches the rest again, and a standby streaming from it converges. At the
// end every completed segment read through the relay, the damaged ones
// among them, equals the primary's.
func TestRelayDamagedStoreTail(t *testing.T) {
	t.Parallel() // waits on PostgreSQL and restarts more than it uses the CPU
	bin := requirePG(t)
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	if err := primary.Exec(ctx, "CREATE TABLE filler(id int, pad text)"); err != nil {
		t.Fatal(err)
	}
	relay := startRelay(t, "r1", primary.ReplicationConnString(), "--log-level", "info")
	standby := newStandby(t, primary, "s1", relay.Conninfo())
	waitStreaming(t, relay, 1, 60*time.Second)
	direct := receiveWAL(t, bin, "direct", "127.0.0.1", primary.Port)
	// A relay-local slot keeps everything from here on in the store, to be
	// read back through the relay at the end.
	createRelaySlot(t, relay, "verify")
	id := relayIdentity(t, relay)

	kinds := []struct {
		name   string
		damage func(data []byte, recs []walstream.Record) (tailDamage, bool)
	}{
		{"zeros inside the last page", zerosInLastPage},
		{"garbage inside the last page", garbageInLastPage},
		{"torn record spanning two pages", tornAcrossPages},
	}
	var damaged []string
	for _, k := range kinds {
		ok := t.Run(k.name, func(t *testing.T) {
			seg := damageRelayTail(t, primary, relay, standby, id, k.damage)
			damaged = append(damaged, seg)
		})
		if !ok {
			return
		}
	}
	compareThroughRelay(t, bin, primary, relay, direct, damaged)
}

// damageRelayTail runs one scenario and returns the damaged segment's name.
func damageRelayTail(t *testing.T, primary *pgcluster.Cluster, relay *relayProc, standby *pgcluster.Cluster,
	id walstream.Identity, pick func([]byte, []walstream.Record) (tailDamage, bool)) string {
	ctx := context.Background()
	// A fresh segment holding this scenario's WAL: pgbench, then rows of
	// about 2 kB (stored inline, uncompressed) so records cross pages.
	writeWAL(t, primary, "SELECT pg_switch_wal()")
	target, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitStoredServedAcked(t, primary, relay, standby, target)
	durable := walstream.LSN(relayDurable(t, relay))
	relay.Kill()

	path, segStart := newestPartial(t, relay, id)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs, stop := walstream.ScanSegment(data, segStart, id)
	n := 0
	for n < len(recs) && recs[n].End <= durable {
		n++
	}
	recs = recs[:n] // whole records the relay had made durable
	d, ok := pick(data, recs)
	if !ok {
		t.Fatalf("%s: no record to damage among %d durable ones (durable %s, scan stopped: %v)", filepath.Base(path), n, durable, stop)
	}
	victim, prev := recs[d.Victim], recs[d.Victim-1]
	at := segStart + walstream.LSN(d.Off)
	old := data[d.Off : d.Off+len(d.New)]
	// Not vacuous: the bytes were WAL the relay had stored durably and
	// served, and the damage changes them.
	if allZeroBytes(old) || bytes.Equal(old, d.New) {
		t.Fatalf("damage at %s would not change WAL bytes", at)
	}
	if end := at + walstream.LSN(len(d.New)); end > durable || at < victim.Start+recordHeader || end > victim.End {
		t.Fatalf("damage %s..%s is not inside record %s..%s below the durable end %s", at, end, victim.Start, victim.End, durable)
	}
	overwrite(t, path, d.Off, d.New)
	t.Logf("%s: %d bytes at %s inside record %s..%s (%d durable records, relay durable at %s)",
		filepath.Base(path), len(d.New), at, victim.Start, victim.End, n, durable)

	logFrom := logSize(t, relay)
	relay.Restart(t)
	if after := walstream.LSN(relayDurable(t, relay)); after < prev.End {
		t.Errorf("durable end after restart %s, before the end %s of the last record ahead of the damage", after, prev.End)
	}
	checkCutLogged(t, relay, logFrom, filepath.Base(path), prev, victim)

	writeWAL(t, primary, "")
	assertConverged(t, primary, standby)
	return strings.TrimSuffix(filepath.Base(path), walstream.PartialSuffix)
}

// waitStoredServedAcked waits until WAL up to target is durable in the
// relay's store, received by the standby streaming from it, and
// acknowledged to the primary (the relay's slot there is past it).
func waitStoredServedAcked(t *testing.T, primary *pgcluster.Cluster, relay *relayProc, standby *pgcluster.Cluster, target uint64) {
	t.Helper()
	ctx := context.Background()
	at := pgcluster.FormatLSN(target)
	waitRelayDurable(t, relay, target, 30*time.Second)
	waitFor(t, 30*time.Second, "the standby to receive "+at, func() (bool, error) {
		lsn, err := standby.QueryLSN(ctx, "SELECT pg_last_wal_receive_lsn()")
		return err == nil && lsn >= target, nil
	})
	waitFor(t, 30*time.Second, "the relay's slot on the primary to reach "+at, func() (bool, error) {
		lsn, err := primary.QueryLSN(ctx, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walrelay_r1'")
		return err == nil && lsn >= target, err
	})
}

// writeWAL runs sql, then a short pgbench and inserts of ~2 kB rows.
func writeWAL(t *testing.T, c *pgcluster.Cluster, sql string) {
	t.Helper()
	ctx := context.Background()
	if sql != "" {
		if err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, `INSERT INTO filler SELECT g, (SELECT string_agg(md5(random()::text || g || i), '')
		FROM generate_series(1, 60) i) FROM generate_series(1, 40) g`); err != nil {
		t.Fatal(err)
	}
}

// checkCutLogged finds the relay's WARN about the cut (and the ERROR about
// acknowledged WAL lost) in its log after offset from: the cut is in seg,
// right after prev and not after victim's start.
func checkCutLogged(t *testing.T, relay *relayProc, from int64, seg string, prev, victim walstream.Record) {
	t.Helper()
	cut := regexp.MustCompile(`cutting the WAL tail after the last valid record" segment=(\S+) .*valid_lsn=(\S+) reason=("[^"]*"|\S+)`)
	var line string
	waitFor(t, 10*time.Second, "the relay to log the cut", func() (bool, error) {
		for _, l := range strings.Split(logSince(t, relay, from), "\n") {
			if m := cut.FindStringSubmatch(l); m != nil && m[1] == seg {
				line = l
				return true, nil
			}
		}
		return false, nil
	})
	m := cut.FindStringSubmatch(line)
	var valid walstream.LSN
	if err := valid.UnmarshalText([]byte(m[2])); err != nil {
		t.Fatal(err)
	}
	if valid < prev.End || valid > victim.Start {
		t.Errorf("cut at %s, want the end of record %s..%s (the damaged one starts at %s)", valid, prev.Start, prev.End, victim.Start)
	}
	t.Logf("relay cut %s at %s: %s", seg, valid, m[3])
	const lost = "lost WAL it had acknowledged"
	if !expectLostAckLog {
		t.Logf("lost-acknowledged ERROR logged: %v (not required)", strings.Contains(logSince(t, relay, from), lost))
		return
	}
	waitFor(t, 20*time.Second, "the relay to log that it lost acknowledged WAL", func() (bool, error) {
		return strings.Contains(logSince(t, relay, from), lost), nil
	})
	for _, l := range strings.Split(logSince(t, relay, from), "\n") {
		if i := strings.Index(l, "level="); i >= 0 && strings.Contains(l, lost) {
			t.Logf("relay: %s", l[i:])
		}
	}
}

// compareThroughRelay completes the current segment, reads the WAL back
// through the relay from its "verify" slot and compares every completed
// segment with the primary's, the damaged ones included.
func compareThroughRelay(t *testing.T, bin string, primary *pgcluster.Cluster, relay *relayProc, direct *pgcluster.WALReceiver, damaged []string) {
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := primary.Exec(ctx, "INSERT INTO filler VALUES (0, 'switch'); SELECT pg_switch_wal()"); err != nil {
			t.Fatal(err)
		}
	}
	target, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitRelayDurable(t, relay, target, 30*time.Second)
	via := receiveWAL(t, bin, "via", "127.0.0.1", relay.Port(), "--slot", "verify")
	id := relayIdentity(t, relay)
	last := walstream.SegmentFileName(1, walstream.LSN(target).SegmentNo(id.SegmentSize)-1, id.SegmentSize)
	waitFor(t, 30*time.Second, "both receivers to complete "+last, func() (bool, error) {
		_, e1 := os.Stat(filepath.Join(direct.Dir, last))
		_, e2 := os.Stat(filepath.Join(via.Dir, last))
		return e1 == nil && e2 == nil, nil
	})
	direct.Stop()
	via.Stop()
	n, err := pgcluster.CompareSegments(direct.Dir, via.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, seg := range damaged {
		_, e1 := os.Stat(filepath.Join(direct.Dir, seg))
		_, e2 := os.Stat(filepath.Join(via.Dir, seg))
		if e1 != nil || e2 != nil {
			t.Errorf("damaged segment %s not compared: %v, %v", seg, e1, e2)
		}
	}
	t.Logf("%d completed segments through the relay equal the primary's, the damaged %s among them", n, strings.Join(damaged, ", "))
}

// zerosInLastPage zeroes up to 64 bytes of the latest record with payload
// on the last page holding WAL, leaving its header.
func zerosInLastPage(data []byte, recs []walstream.Record) (tailDamage, bool) {
	if len(recs) < 2 {
		return tailDamage{}, false
	}
	last := pageOf(recs[len(recs)-1].End - 1)
	for i := len(recs) - 1; i >= 1; i-- {
		r := recs[i]
		lo := max(r.Start+recordHeader, last+pageHeaderLen(last))
		if r.End < lo+8 {
			continue
		}
		if n := min(64, int(r.End-lo)); !allZeroBytes(data[segOff(lo) : segOff(lo)+n]) {
			return tailDamage{Victim: i, Off: segOff(lo), New: make([]byte, n)}, true
		}
	}
	return tailDamage{}, false
}

// garbageInLastPage overwrites up to 32 bytes of payload with random bytes
// on the last page holding WAL, in the earliest record that has them there
// (one starting on that page if any): the whole records after it on the
// page are cut all the same.
func garbageInLastPage(data []byte, recs []walstream.Record) (tailDamage, bool) {
	if len(recs) < 2 {
		return tailDamage{}, false
	}
	last := pageOf(recs[len(recs)-1].End - 1)
	d, found := tailDamage{}, false
	for _, startsOnPage := range []bool{true, false} {
		if found {
			break
		}
		for i := len(recs) - 1; i >= 1 && recs[i].End > last; i-- {
			r := recs[i]
			lo := max(r.Start+recordHeader, last+pageHeaderLen(last))
			if r.End < lo+16 || startsOnPage && r.Start < last {
				continue
			}
			if n := min(32, int(r.End-lo)); !allZeroBytes(data[segOff(lo) : segOff(lo)+n]) {
				d, found = tailDamage{Victim: i, Off: segOff(lo), New: make([]byte, n)}, true
			}
		}
	}
	if !found {
		return d, false
	}
	for old := data[d.Off : d.Off+len(d.New)]; ; {
		rand.Read(d.New)
		if !bytes.Equal(d.New, old) {
			return d, true
		}
	}
}

// tornAcrossPages zeroes what the latest record crossing a page boundary
// has on its second page after that page's header, as a write torn there.
func tornAcrossPages(data []byte, recs []walstream.Record) (tailDamage, bool) {
	for i := len(recs) - 1; i >= 1; i-- {
		r := recs[i]
		if pageOf(r.Start) == pageOf(r.End-1) {
			continue
		}
		second := pageOf(r.Start) + walstream.PageSize
		lo, hi := second+pageHeaderLen(second), min(r.End, second+walstream.PageSize)
		if hi <= lo || allZeroBytes(data[segOff(lo):segOff(hi)]) {
			continue
		}
		return tailDamage{Victim: i, Off: segOff(lo), New: make([]byte, hi-lo)}, true
	}
	return tailDamage{}, false
}

func pageOf(lsn walstream.LSN) walstream.LSN { return lsn &^ (walstream.PageSize - 1) }

// segOff is lsn's offset in its segment; the relay's segments are 16 MiB
// (initdb's default, which the test primaries use).
func segOff(lsn walstream.LSN) int { return int(lsn.SegmentOffset(16 << 20)) }

func pageHeaderLen(page walstream.LSN) walstream.LSN {
	if page.SegmentOffset(16<<20) == 0 {
		return longPageHeader
	}
	return shortPageHeader
}

func allZeroBytes(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// relayIdentity reads the store's identity.json.
func relayIdentity(t *testing.T, r *relayProc) walstream.Identity {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.DataDir, "identity.json"))
	if err != nil {
		t.Fatal(err)
	}
	var id walstream.Identity
	if err := json.Unmarshal(b, &id); err != nil {
		t.Fatalf("identity.json: %v", err)
	}
	if id.SegmentSize != 16<<20 {
		t.Fatalf("segment size %d, the test assumes 16 MiB", id.SegmentSize)
	}
	return id
}

// newestPartial is the segment the relay was writing and where it starts:
// the newest .partial holding WAL, not the all-zero file the relay prepares
// under the next segment's name (walstream's spare).
func newestPartial(t *testing.T, r *relayProc, id walstream.Identity) (string, walstream.LSN) {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(r.DataDir, "wal", "*"+walstream.PartialSuffix))
	if err != nil || len(names) == 0 {
		t.Fatalf("no partial segment in the relay's store (%v)", err)
	}
	sort.Strings(names)
	for i := len(names) - 1; i >= 0; i-- {
		path := names[i]
		head := make([]byte, walstream.PageSize)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadFull(f, head)
		f.Close()
		if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		if bytes.Count(head, []byte{0}) == len(head) {
			continue
		}
		_, no, err := walstream.ParseSegmentFileName(strings.TrimSuffix(filepath.Base(path), walstream.PartialSuffix), id.SegmentSize)
		if err != nil {
			t.Fatal(err)
		}
		return path, walstream.LSN(no * id.SegmentSize)
	}
	t.Fatalf("no partial segment holding WAL in the relay's store: %q", names)
	return "", 0
}

func overwrite(t *testing.T, path string, off int, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(off)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func logSize(t *testing.T, r *relayProc) int64 {
	t.Helper()
	st, err := os.Stat(r.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// logSince is the relay's log from byte offset from on.
func logSince(t *testing.T, r *relayProc, from int64) string {
	t.Helper()
	b, err := os.ReadFile(r.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[min(from, int64(len(b))):])
}

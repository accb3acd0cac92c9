package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/walstream"
)

// The relay's data directory is a small tmpfs that fills up under pgbench
// and bulk writes, while a relay-local slot pins the WAL from its creation.
// The relay first drops what it kept only for --retain (saying so once;
// --retain stays off until SIGHUP), then stops receiving and acknowledging
// WAL at the start of the segment it cannot create (the primary's slot
// stays at the relay's durable end), says why in its status, log and
// metrics, keeps its standby connected without ever sending it WAL past
// that end, and resumes by itself once space is freed. With the pin gone a
// second fill is healed by the relay alone. The standby converges with
// equal tables and the WAL received through the relay is byte-identical to
// the primary's.
func TestRelayDiskFull(t *testing.T) {
	t.Parallel() // waits on restarts, faults and timers more than it uses the CPU
	bin := requirePG(t)
	mnt := filepath.Join(testDir(t), "relayfs")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=160m", "tmpfs", mnt).CombinedOutput(); err != nil {
		if os.Getenv("WALRELAY_REQUIRE_TMPFS") == "1" {
			t.Fatalf("WALRELAY_REQUIRE_TMPFS=1: cannot mount a tmpfs to fill: %v: %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs to fill (needs root; WALRELAY_REQUIRE_TMPFS=1 makes this a failure): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })

	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	// Raw segments, so that the space the relay needs per segment is known
	// (compressed ones would free space as they go and only delay the fill).
	relay := startRelay(t, "r1", primary.ReplicationConnString(), "--data-dir", filepath.Join(mnt, "relay"), "--store-compression", "off")
	s := newStandby(t, primary, "s", relay.Conninfo())
	waitStreaming(t, relay, 1, 30*time.Second)
	// A relay-local slot pins everything from here: beyond the older WAL
	// kept for --retain, the relay cannot make room by itself and must
	// wait for the operator.
	createRelaySlot(t, relay, "pin")
	direct := receiveWAL(t, bin, "direct", "127.0.0.1", primary.Port)
	via := receiveWAL(t, bin, "via", "127.0.0.1", relay.Port())

	// Leave room for about two more segments.
	filler := filepath.Join(mnt, "filler")
	fill := func() {
		var fs syscall.Statfs_t
		if err := syscall.Statfs(mnt, &fs); err != nil {
			t.Fatal(err)
		}
		free := int64(fs.Bavail) * fs.Bsize
		if free <= 40<<20 {
			return
		}
		if err := os.WriteFile(filler, make([]byte, free-40<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fill()

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(loadCtx, 2, 90*time.Second) }()
	if err := primary.Exec(ctx, "CREATE TABLE bulk(id int, pad text)"); err != nil {
		t.Fatal(err)
	}
	state := func() (string, string) {
		ups, _ := relay.Status(t)["upstream"].(map[string]any)
		st, _ := ups["state"].(string)
		le, _ := ups["last_error"].(string)
		return st, le
	}
	insert := func(c byte) error {
		return primary.Exec(ctx, fmt.Sprintf("INSERT INTO bulk SELECT g, repeat('%c', 300) FROM generate_series(1, 20000) g", c))
	}
	waitFor(t, 60*time.Second, "relay reporting a full disk", func() (bool, error) {
		if st, _ := state(); st == "disk-full" {
			return true, nil
		}
		return false, insert('x')
	})
	// First it drops what it keeps only for --retain (the segments from
	// before the pin), goes on if that made room, and fills up for good.
	waitFor(t, 10*time.Second, "the relay saying it drops --retain", func() (bool, error) {
		return relayLogCount(t, relay, "removing WAL kept only by --retain") == 1, nil
	})
	var full uint64
	var since time.Time
	waitFor(t, 90*time.Second, "relay stopped for longer than a retention pass", func() (bool, error) {
		st, _ := state()
		if d := relayDurable(t, relay); st != "disk-full" || d != full {
			full, since = d, time.Now()
			// Fill the room --retain left faster than pgbench alone would.
			return false, insert('x')
		} else if time.Since(since) > 7*time.Second {
			return true, nil
		}
		return false, nil // pgbench goes on writing
	})
	_, lastErr := state()
	t.Logf("relay stopped at %s: %s", pgcluster.FormatLSN(full), lastErr)
	if !strings.Contains(lastErr, "no space left on device") {
		t.Errorf("status does not say why: %q", lastErr)
	}
	// It stops where it cannot create the next segment, having published
	// every byte before it (the completed segments are durable).
	segSize := uint64(16 << 20) // initdb's default, which the harness keeps
	if m := regexp.MustCompile(`create segment ([0-9A-F]{24})\.partial`).FindStringSubmatch(lastErr); m == nil {
		t.Errorf("the error does not name the segment it could not create: %q", lastErr)
	} else if _, no, err := walstream.ParseSegmentFileName(m[1], segSize); err != nil {
		t.Error(err)
	} else if at := no * segSize; full != at {
		t.Errorf("the relay published up to %s, not the start %s of the segment it could not create", pgcluster.FormatLSN(full), pgcluster.FormatLSN(at))
	}
	if !relayLogContains(t, relay, "not receiving or acknowledging WAL until space is freed") {
		t.Error("the relay's log does not say it is out of space")
	}
	if m := scrape(t, "http://"+relay.HTTP+"/metrics"); !strings.Contains(m, "walrelay_store_disk_full 1") {
		t.Error("walrelay_store_disk_full is not 1 while the disk is full")
	}

	// While full: the primary keeps committing, the relay neither stores
	// nor acknowledges more, and its standby never gets past the relay's
	// durable end, yet stays connected.
	for i := 0; i < 3; i++ {
		if err := insert('y'); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
	}
	ahead, _ := primary.CurrentLSN(ctx)
	if ahead <= full {
		t.Fatalf("primary at %s is not ahead of the relay's %s", pgcluster.FormatLSN(ahead), pgcluster.FormatLSN(full))
	}
	if st, _ := state(); st != "disk-full" {
		t.Fatalf("relay left the disk-full state by itself: %s", st)
	}
	if d := relayDurable(t, relay); d != full {
		t.Fatalf("relay's durable end moved from %s to %s with the disk full", pgcluster.FormatLSN(full), pgcluster.FormatLSN(d))
	}
	slot, err := primary.QueryLSN(ctx, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walrelay_r1'")
	if err != nil {
		t.Fatal(err)
	}
	if slot > full {
		t.Fatalf("the primary's slot for the relay is at %s, past the relay's durable %s: it acknowledged WAL it does not hold", pgcluster.FormatLSN(slot), pgcluster.FormatLSN(full))
	}
	recv, err := s.QueryLSN(ctx, "SELECT pg_last_wal_receive_lsn()")
	if err != nil {
		t.Fatal(err)
	}
	if recv > full {
		t.Fatalf("standby received up to %s, past the relay's durable end %s", pgcluster.FormatLSN(recv), pgcluster.FormatLSN(full))
	}
	waitStreaming(t, relay, 2, 10*time.Second) // the standby and pg_receivewal stay connected

	// Space returns: the relay resumes and catches up with no help. The
	// room freed must hold what the primary wrote meanwhile (the pin keeps
	// all of it), which under a loaded CI can be more than the filler: the
	// operator then also grows the file system.
	room := roomToReach(t, filler, full, ahead, segSize)
	if room > 0 {
		var fs syscall.Statfs_t
		if err := syscall.Statfs(mnt, &fs); err != nil {
			t.Fatal(err)
		}
		size := int64(fs.Blocks)*fs.Bsize + room
		if out, err := exec.Command("mount", "-o", fmt.Sprintf("remount,size=%d", size), mnt).CombinedOutput(); err != nil {
			t.Fatalf("grow the tmpfs by %d bytes: %v: %s", room, err, out)
		}
		t.Logf("the primary wrote %d MB while the disk was full, more than the filler frees: the tmpfs grows by %d MB too",
			(ahead-full)>>20, room>>20)
	}
	freed := time.Now()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitRelayDurable(t, relay, ahead, 60*time.Second)
	t.Logf("relay caught up to %s %.1f s after space returned", pgcluster.FormatLSN(ahead), time.Since(freed).Seconds())
	if m := scrape(t, "http://"+relay.HTTP+"/metrics"); !strings.Contains(m, "walrelay_store_disk_full 0") {
		t.Error("walrelay_store_disk_full did not return to 0")
	}

	// Without the pin, the same fill is healed by the relay itself: --retain
	// has been off since the disk filled, so it keeps only what its children
	// need and goes on, the filler still there, saying nothing new.
	passes := relayLogCount(t, relay, "removed old WAL segments")
	dropRelaySlot(t, relay, "pin")
	waitFor(t, 30*time.Second, "a retention pass removing what the pin held", func() (bool, error) {
		return relayLogCount(t, relay, "removed old WAL segments") > passes, nil
	})
	fill()
	for i := 0; i < 12; i++ {
		if err := insert('z'); err != nil {
			t.Fatal(err)
		}
	}
	further, _ := primary.CurrentLSN(ctx)
	waitRelayDurable(t, relay, further, 90*time.Second)
	t.Logf("with the filler still in place the relay made room itself and reached %s (%.0f MB past the second fill)",
		pgcluster.FormatLSN(further), float64(further-ahead)/1e6)
	if n := relayLogCount(t, relay, "removing WAL kept only by --retain"); n != 1 {
		t.Errorf("the relay said %d times that it drops --retain, want once until reload", n)
	}
	// The operator, having made room, puts --retain back with SIGHUP.
	if err := relay.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "--retain back after SIGHUP", func() (bool, error) {
		return relayLogContains(t, relay, "--retain is in effect again after the full disk"), nil
	})
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	stopLoad()
	<-load
	assertConverged(t, primary, s)
	for i := 0; i < 2; i++ {
		if err := primary.Exec(ctx, "INSERT INTO bulk VALUES (0, 'switch'); SELECT pg_switch_wal()"); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := primary.CurrentLSN(ctx)
	waitRelayDurable(t, relay, end, 30*time.Second)
	time.Sleep(2 * time.Second)
	direct.Stop()
	via.Stop()
	n, err := pgcluster.CompareSegments(direct.Dir, via.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if n < 3 {
		t.Fatalf("only %d completed segments to compare", n)
	}
	t.Logf("%d completed segments through the relay, across the full disk, equal the primary's", n)
}

// roomToReach is how many bytes beyond the filler's size the relay needs to
// store the WAL from full (a segment start) to ahead: the segments up to
// the one holding ahead, plus the spare segment it prepares, plus one for
// the WAL pgbench goes on writing; zero when the filler frees enough.
func roomToReach(t *testing.T, filler string, full, ahead, segSize uint64) int64 {
	t.Helper()
	st, err := os.Stat(filler)
	if err != nil {
		t.Fatal(err)
	}
	need := int64((ahead/segSize - full/segSize + 3) * segSize)
	return max(0, need-st.Size())
}

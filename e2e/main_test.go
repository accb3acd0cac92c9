// Package e2e runs walrelay's binary against real PostgreSQL clusters.
package e2e

import (
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
	out, err := exec.Command("go", "build", "-race", "-o", relayBin, "github.com/walrelay/walrelay/cmd/walrelay").CombinedOutput()
	if err != nil {
		relayBuildErr = fmt.Errorf("build walrelay: %w: %s", err, out)
	}
	// The binary's directory must be reachable for nothing but us; clusters
	// get their own directories.
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The README's main command works end to end: a primary, a relay and two
// standbys, converged and checked, then removed.
func TestDemo(t *testing.T) {
	requirePG(t)
	if relayBuildErr != nil {
		t.Fatal(relayBuildErr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, relayBin, "demo", "--duration", "3s").CombinedOutput()
	if err != nil {
		t.Fatalf("walrelay demo: %v\n%s", err, out)
	}
	for _, want := range []string{"└─ relay r1", "standby1", "standby2", "pgbench tables identical to the primary's"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}

// Without PostgreSQL the demo says what to install and fails.
func TestDemoExplainsMissingPostgreSQL(t *testing.T) {
	if relayBuildErr != nil {
		t.Fatal(relayBuildErr)
	}
	cmd := exec.Command(relayBin, "demo")
	cmd.Env = append(cmd.Environ(), "WALRELAY_PG_BIN="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("demo succeeded without PostgreSQL:\n%s", out)
	}
	if !strings.Contains(string(out), "apt-get install -y postgresql") {
		t.Errorf("demo output does not say what to install:\n%s", out)
	}
}

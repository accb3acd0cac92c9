package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

type composeFile struct {
	Services map[string]struct {
		Image       string            `yaml:"image"`
		Command     []string          `yaml:"command"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Environment map[string]string `yaml:"environment"`
	} `yaml:"services"`
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	_, here, _, _ := runtime.Caller(0)
	b, err := os.ReadFile(filepath.Join(filepath.Dir(here), "..", "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var cf composeFile
	if err := yaml.Unmarshal(b, &cf); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	return cf
}

// startBinary runs walrelay with args until the test ends (SIGTERM, then
// SIGKILL), its output in a log file shown when the test fails.
func startBinary(t *testing.T, name string, env []string, args ...string) {
	t.Helper()
	logPath := filepath.Join(testDir(t), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(relayBin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, tail(logPath, 30))
		}
	})
}

// The compose file parses, has the services of the design, and its walrelay
// commands, run exactly as written (host names and ports mapped to local
// ones), build the tree it promises: three managers, relay2 chained below
// relay1, three standbys streaming from relay2 and registered.
func TestComposeCommandsBuildTheTree(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	cf := readCompose(t)
	for _, svc := range []string{"primary", "manager1", "manager2", "manager3", "setup", "relay1", "relay2", "standby1", "standby2", "standby3"} {
		if _, ok := cf.Services[svc]; !ok {
			t.Fatalf("docker-compose.yml has no service %s", svc)
		}
	}
	for _, svc := range []string{"primary", "standby1", "standby2", "standby3"} {
		if img := cf.Services[svc].Image; !strings.HasPrefix(img, "postgres:") {
			t.Errorf("%s uses image %q, want the official postgres image", svc, img)
		}
	}
	requirePG(t)
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	// The primary's settings from its compose command (-c name=value),
	// those a reload applies: a restart-only value in postgresql.auto.conf
	// would reach the base backups unapplied (the harness already gives
	// the primary what replication needs).
	conn, err := primary.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pcmd := cf.Services["primary"].Command
	for i := 0; i+1 < len(pcmd); i++ {
		if pcmd[i] != "-c" {
			continue
		}
		k, v, _ := strings.Cut(pcmd[i+1], "=")
		var context string
		if err := conn.QueryRow(ctx, "SELECT context FROM pg_settings WHERE name = $1", k).Scan(&context); err != nil {
			t.Fatalf("compose primary setting %s: %v", k, err)
		}
		if context != "sighup" && context != "superuser" && context != "user" {
			continue
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER SYSTEM SET %s = '%s'", k, v)); err != nil {
			t.Fatal(err)
		}
	}
	var keep string
	_, err = conn.Exec(ctx, "SELECT pg_reload_conf()")
	if err == nil {
		time.Sleep(200 * time.Millisecond)
		err = conn.QueryRow(ctx, "SHOW wal_keep_size").Scan(&keep)
	}
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary wal_keep_size = %s", keep)
	port := func() string {
		p, err := pgcluster.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(p)
	}
	// Every address the compose file uses, mapped to a local one.
	pairs := []string{"host=primary port=5432", fmt.Sprintf("host=127.0.0.1 port=%d", primary.Port)}
	for i := 1; i <= 3; i++ {
		raft, api := port(), port()
		pairs = append(pairs,
			fmt.Sprintf("manager%d:7001", i), "127.0.0.1:"+raft,
			fmt.Sprintf("manager%d:7101", i), "127.0.0.1:"+api)
	}
	relayPorts := map[string]string{}
	for i := 1; i <= 2; i++ {
		relayPorts[fmt.Sprintf("relay%d", i)] = port()
		pairs = append(pairs, fmt.Sprintf("relay%d:6432", i), "127.0.0.1:"+relayPorts[fmt.Sprintf("relay%d", i)])
	}
	global := strings.NewReplacer(append(pairs, "/var/lib/walrelay", filepath.Join(testDir(t), "compose"))...)
	local := func(svc string, args []string) []string {
		var bind *strings.Replacer
		switch {
		case strings.HasPrefix(svc, "manager"):
			api := global.Replace(svc + ":7101")
			bind = strings.NewReplacer("0.0.0.0:7101", api)
		case strings.HasPrefix(svc, "relay"):
			bind = strings.NewReplacer("0.0.0.0:6432", "127.0.0.1:"+relayPorts[svc], "0.0.0.0:8081", "127.0.0.1:"+port())
		}
		out := make([]string, len(args))
		for i, a := range args {
			if bind != nil {
				a = bind.Replace(a)
			}
			out[i] = global.Replace(a)
		}
		return out
	}
	for _, svc := range []string{"manager1", "manager2", "manager3", "relay1", "relay2"} {
		startBinary(t, svc, nil, local(svc, cf.Services[svc].Command)...)
	}
	// The standbys, as the compose file makes them: a base backup of the
	// primary, streaming from relay2 under their host names.
	standbys := map[string]*pgcluster.Cluster{}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("standby%d", i)
		standbys[name] = newStandby(t, primary, name, fmt.Sprintf("host=127.0.0.1 port=%s user=postgres", relayPorts["relay2"]))
		pairs = append(pairs, fmt.Sprintf("host=%s port=5432", name), fmt.Sprintf("host=127.0.0.1 port=%d", standbys[name].Port))
	}
	global = strings.NewReplacer(append(pairs, "/var/lib/walrelay", filepath.Join(testDir(t), "compose"))...)
	setup := cf.Services["setup"]
	managers := global.Replace(setup.Environment["WALRELAY_MANAGER"])
	script := local("setup", setup.Command)
	sctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	sh := exec.CommandContext(sctx, setup.Entrypoint[0], append(setup.Entrypoint[1:], script...)...)
	sh.Env = append(os.Environ(), "WALRELAY_MANAGER="+managers, "PATH="+filepath.Dir(relayBin)+":"+os.Getenv("PATH"))
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("setup: %v\n%s", err, out)
	}
	waitFor(t, 60*time.Second, "the compose tree", func() (bool, error) {
		tr, err := treeJSON(managers)
		if err != nil || len(tr.Tree.Managers) != 3 {
			return false, nil
		}
		if tr.Tree.Nodes["r1"] == nil || tr.Tree.Nodes["r1"].Parent != "primary" || tr.Tree.Nodes["r2"] == nil || tr.Tree.Nodes["r2"].Parent != "r1" {
			return false, nil
		}
		for name, sb := range standbys {
			if tr.Tree.Nodes[name] == nil {
				return false, nil
			}
			_, streaming, err := receiverOf(ctx, sb)
			if err != nil || !streaming {
				return false, nil
			}
		}
		return true, nil
	})
	if err := primary.Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, standbys["standby1"], standbys["standby2"], standbys["standby3"])
	t.Logf("tree from the compose commands:\n%s", cliT(t, "tree", "--manager", managers))
}

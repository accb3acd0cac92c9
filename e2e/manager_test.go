package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/topology"
)

type managerProc struct {
	id, url, raftAddr string
	logPath           string
	cmd               *exec.Cmd
	done              chan error
}

func startManagerProc(t testing.TB, id string, join string, extra ...string) *managerProc {
	t.Helper()
	if relayBuildErr != nil {
		t.Fatal(relayBuildErr)
	}
	rp, _ := pgcluster.FreePort()
	hp, _ := pgcluster.FreePort()
	args := []string{"manager", "--node-id", id, "--raft-addr", fmt.Sprintf("127.0.0.1:%d", rp),
		"--http", fmt.Sprintf("127.0.0.1:%d", hp), "--data-dir", filepath.Join(testDir(t), "mgr-"+id)}
	switch join {
	case "":
		args = append(args, "--bootstrap")
	case "none": // waits for `walrelay members add`
	default:
		args = append(args, "--join", join)
	}
	args = append(args, extra...)
	logPath := filepath.Join(testDir(t), "mgr-"+id+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	m := &managerProc{id: id, url: fmt.Sprintf("http://127.0.0.1:%d", hp), raftAddr: fmt.Sprintf("127.0.0.1:%d", rp), logPath: logPath, cmd: exec.Command(relayBin, args...), done: make(chan error, 1)}
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.done <- m.cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(10 * time.Second):
			m.cmd.Process.Kill()
			<-m.done
		}
		if t.Failed() {
			t.Logf("manager %s log:\n%s", id, tail(logPath, 30))
		}
	})
	return m
}

// cliT runs the binary and fails the test when it exits non-zero.
func cliT(t testing.TB, args ...string) string {
	t.Helper()
	out, err := walrelayCLI(args...)
	if err != nil {
		t.Fatalf("walrelay %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// walrelayCLI runs the binary and returns its output and exit error.
func walrelayCLI(args ...string) (string, error) {
	out, err := exec.Command(relayBin, args...).CombinedOutput()
	return string(out), err
}

// Three manager processes: the CLI registers nodes through any member,
// `walrelay tree` shows the same tree from every member (text and JSON),
// survives the loss of the leader, and fails with a non-zero exit when no
// manager answers.
func TestManagersAndTreeCLI(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	m1 := startManagerProc(t, "m1", "")
	m2 := startManagerProc(t, "m2", m1.url)
	m3 := startManagerProc(t, "m3", m1.url)
	all := strings.Join([]string{m3.url, m2.url, m1.url}, ",")
	waitFor(t, 30*time.Second, "three managers", func() (bool, error) {
		out, err := walrelayCLI("tree", "--manager", m1.url, "-o", "json")
		if err != nil {
			return false, nil
		}
		var tr topology.TreeResponse
		if err := json.Unmarshal([]byte(out), &tr); err != nil {
			return false, err
		}
		return len(tr.Tree.Managers) == 3, nil
	})
	for _, args := range [][]string{
		{"primary", "set", "pg1", "--conninfo", "host=127.0.0.1 port=5432", "--timeline", "1"},
		{"standby", "add", "s1", "--zone", "a", "--tier", "high", "--promotable"},
		{"standby", "add", "s2", "--zone", "b"},
		{"move", "s1", "--to", "pg1"},
		{"move", "s2", "--to", "pg1"},
	} {
		if out, err := walrelayCLI(append(args, "--manager", all)...); err != nil {
			t.Fatalf("walrelay %v: %v\n%s", args, err, out)
		}
	}
	if out, err := walrelayCLI("move", "s1", "--to", "ghost", "--manager", all); err == nil {
		t.Errorf("move to an unknown parent succeeded: %s", out)
	}
	var epoch uint64
	for _, m := range []*managerProc{m1, m2, m3} {
		waitFor(t, 10*time.Second, "tree on "+m.id, func() (bool, error) {
			out, err := walrelayCLI("tree", "--manager", m.url)
			return err == nil && strings.Contains(out, "├─ s1") && strings.Contains(out, "└─ s2") &&
				strings.Contains(out, "a/high"), nil
		})
		out, _ := walrelayCLI("tree", "--manager", m.url, "-o", "json")
		var tr topology.TreeResponse
		if err := json.Unmarshal([]byte(out), &tr); err != nil {
			t.Fatal(err)
		}
		if epoch != 0 && tr.Tree.Epoch != epoch {
			t.Errorf("member %s at epoch %d, others %d", m.id, tr.Tree.Epoch, epoch)
		}
		epoch = tr.Tree.Epoch
	}
	// Membership: remove a member (it must not rejoin on its own), add a
	// fresh one that was started with neither --bootstrap nor --join.
	members := func() string { return cliT(t, "members", "list", "--manager", all) }
	if out := members(); strings.Count(out, "follower") != 2 || strings.Count(out, "leader") != 1 {
		t.Fatalf("members list:\n%s", out)
	}
	cliT(t, "members", "remove", "m3", "--manager", all)
	time.Sleep(3 * time.Second) // several membership passes of m3
	if out := members(); strings.Contains(out, "m3") {
		t.Fatalf("m3 still (or again) a member after members remove:\n%s", out)
	}
	m4 := startManagerProc(t, "m4", "none")
	raft4 := m4.raftAddr
	cliT(t, "members", "add", "m4", "--raft-addr", raft4, "--http", m4.url, "--manager", all)
	all = strings.Join([]string{m1.url, m2.url, m4.url}, ",")
	waitFor(t, 20*time.Second, "m4 serving the tree", func() (bool, error) {
		out, err := walrelayCLI("tree", "--manager", m4.url, "-o", "json")
		if err != nil {
			return false, nil
		}
		var tr4 topology.TreeResponse
		json.Unmarshal([]byte(out), &tr4)
		return tr4.Tree.Epoch >= epoch && tr4.Leader != "", nil
	})
	if out := members(); !strings.Contains(out, "m4") || strings.Count(out, "follower") != 2 {
		t.Fatalf("members list after adding m4:\n%s", out)
	}
	m3.cmd.Process.Signal(syscall.SIGTERM)

	// Kill the leader: the others elect one and still serve the same tree.
	out, _ := walrelayCLI("tree", "--manager", all, "-o", "json")
	var tr topology.TreeResponse
	json.Unmarshal([]byte(out), &tr)
	for _, m := range []*managerProc{m1, m2, m4} {
		if m.id == tr.Leader {
			m.cmd.Process.Kill()
			<-m.done
			m.done <- nil
		}
	}
	waitFor(t, 20*time.Second, "a new leader", func() (bool, error) {
		out, err := walrelayCLI("tree", "--manager", all, "-o", "json")
		if err != nil {
			return false, nil
		}
		var now topology.TreeResponse
		json.Unmarshal([]byte(out), &now)
		return now.Leader != "" && now.Leader != tr.Leader && now.Tree.Epoch == tr.Tree.Epoch, nil
	})
	if out, err := walrelayCLI("tree", "--manager", "http://127.0.0.1:1"); err == nil {
		t.Errorf("tree with no manager reachable exited 0: %s", out)
	}
}

// Relays under management: they register and take the parent the managers
// assign. SIGKILL the relay that has a child relay: the managers mark it
// failed, re-assign the child, which switches upstream live, and the
// standby below converges with matching checksums.
func TestManagedRelayReparentedOnFailure(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	m := startManagerProc(t, "m1", "", "--failure-timeout", "2s")
	waitFor(t, 20*time.Second, "manager leader", func() (bool, error) {
		_, err := walrelayCLI("tree", "--manager", m.url)
		return err == nil, nil
	})
	if out, err := walrelayCLI("primary", "set", "pg", "--conninfo", primary.ReplicationConnString(), "--manager", m.url); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	r1 := startRelay(t, "r1", "", "--manager", m.url)
	startRelay(t, "r2", "", "--manager", m.url) // a healthy relay the child can move to
	r3 := startRelay(t, "r3", "", "--manager", m.url)
	if out, err := walrelayCLI("move", "r3", "--to", "r1", "--manager", m.url); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	upstreamPort := func(r *relayProc) string {
		up, _ := r.Status(t)["upstream"].(map[string]any)
		target, _ := up["target"].(string)
		if up["state"] != "streaming" {
			return ""
		}
		return target
	}
	waitFor(t, 30*time.Second, "r3 streaming from r1", func() (bool, error) {
		return strings.Contains(upstreamPort(r3), fmt.Sprintf("port=%d", r1.Port())), nil
	})
	s := newStandby(t, primary, "s", r3.Conninfo())
	waitStreaming(t, r3, 1, 30*time.Second)
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(ctx, 2, 8*time.Second) }()
	time.Sleep(2 * time.Second)
	r1.Kill()
	killed := time.Now()
	waitFor(t, 30*time.Second, "r3 streaming from a new parent", func() (bool, error) {
		target := upstreamPort(r3)
		return target != "" && !strings.Contains(target, fmt.Sprintf("port=%d", r1.Port())), nil
	})
	t.Logf("r3 streams from %q %.1fs after r1 was killed", upstreamPort(r3), time.Since(killed).Seconds())
	if err := <-load; err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, s)
	out, _ := walrelayCLI("tree", "--manager", m.url)
	t.Logf("tree:\n%s", out)
	if !strings.Contains(out, "failed") {
		t.Errorf("r1 not shown failed")
	}
}

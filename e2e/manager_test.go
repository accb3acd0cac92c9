package e2e

import (
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
	id, url string
	cmd     *exec.Cmd
	done    chan error
}

func startManagerProc(t *testing.T, id string, join string) *managerProc {
	t.Helper()
	if relayBuildErr != nil {
		t.Fatal(relayBuildErr)
	}
	rp, _ := pgcluster.FreePort()
	hp, _ := pgcluster.FreePort()
	args := []string{"manager", "--node-id", id, "--raft-addr", fmt.Sprintf("127.0.0.1:%d", rp),
		"--http", fmt.Sprintf("127.0.0.1:%d", hp), "--data-dir", filepath.Join(testDir(t), "mgr-"+id)}
	if join == "" {
		args = append(args, "--bootstrap")
	} else {
		args = append(args, "--join", join)
	}
	logPath := filepath.Join(testDir(t), "mgr-"+id+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	m := &managerProc{id: id, url: fmt.Sprintf("http://127.0.0.1:%d", hp), cmd: exec.Command(relayBin, args...), done: make(chan error, 1)}
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
	// Kill the leader: the others elect one and still serve the same tree.
	out, _ := walrelayCLI("tree", "--manager", all, "-o", "json")
	var tr topology.TreeResponse
	json.Unmarshal([]byte(out), &tr)
	for _, m := range []*managerProc{m1, m2, m3} {
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

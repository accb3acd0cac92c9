package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func writeFile(t *testing.T, dir, name, text string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigCheck(t *testing.T) {
	dir := t.TempDir()
	rules := writeFile(t, dir, "rules", "hostssl all all scram-sha-256\n")
	good := writeFile(t, dir, "relay.yaml", `# a relay
node-id: r1
data-dir: /var/lib/walrelay
listen: 0.0.0.0:6432
upstream: "host=pg1 user=replicator password=s3cret sslmode=verify-full"
retain: 24h
access-rules: `+rules+`
max-connections: 300
`)
	t.Setenv("WALRELAY_ZONE", "eu-1")
	out, err := runCLI(t, "config", "check", good)
	if err != nil {
		t.Fatalf("config check of a good file: %v\n%s", err, out)
	}
	for _, want := range []string{"relay.yaml: ok (relay)", "password=****", "zone ", "eu-1", "env", "max-connections", "300", "file", "sender-timeout", "default"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "s3cret") {
		t.Errorf("config check shows the password:\n%s", out)
	}
	for name, tt := range map[string]struct{ text, want string }{
		"unknown.yaml":  {"node-id: r1\ndata-dir: d\nlisten: :1\nfrobnicate: yes\n", "unknown.yaml:4: unknown setting \"frobnicate\""},
		"badvalue.yaml": {"node-id: r1\ndata-dir: d\n\nmax-connections: many\n", "badvalue.yaml:4: max-connections: invalid argument \"many\""},
		"syntax.yaml":   {"node-id: r1\n  data-dir: [\n", "syntax.yaml: yaml: line"},
		"missing.yaml":  {"listen: :1\n", "missing.yaml: required: node-id, data-dir"},
		"retain.yaml":   {"node-id: r1\ndata-dir: d\nretain: forever\n", "retain.yaml: retain:"},
		"rules.yaml":    {"node-id: r1\ndata-dir: d\naccess-rules: " + writeFile(t, dir, "badrules", "host all all md5\n") + "\n", "badrules line 1: method \"md5\" is not offered"},
		"nested.yaml":   {"node-id: r1\ndata-dir: d\nlisten:\n  host: x\n", "nested.yaml:4: listen: want a single value"},
	} {
		_, err := runCLI(t, "config", "check", writeFile(t, dir, name, tt.text))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("config check %s: %v, want an error containing %q", name, err, tt.want)
		}
	}
	mgr := writeFile(t, dir, "manager.yaml", "node-id: m1\ndata-dir: /var/lib/walrelay-manager\npromotion: external\n")
	if out, err := runCLI(t, "config", "check", "--role", "manager", mgr); err != nil || !strings.Contains(out, "external") {
		t.Errorf("manager config check: %v\n%s", err, out)
	}
}

// Flags win over the environment, which wins over the file.
func TestSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, dir, "r.yaml", "node-id: from-file\nzone: file-zone\nlisten: 1.1.1.1:1\n")
	t.Setenv("WALRELAY_ZONE", "env-zone")
	t.Setenv("WALRELAY_LISTEN", "2.2.2.2:2")
	var f relayFlags
	cmd := newRelayCmdWith(&f)
	if err := cmd.Flags().Parse([]string{"--listen", "3.3.3.3:3"}); err != nil {
		t.Fatal(err)
	}
	src, err := applySettings(cmd.Flags(), file)
	if err != nil {
		t.Fatal(err)
	}
	if f.nodeID != "from-file" || f.zone != "env-zone" || f.listen != "3.3.3.3:3" {
		t.Errorf("node-id %q zone %q listen %q: want from-file, env-zone, 3.3.3.3:3", f.nodeID, f.zone, f.listen)
	}
	if src["node-id"] != "file" || src["zone"] != "env" || src["listen"] != "flag" {
		t.Errorf("sources %v", src)
	}
}

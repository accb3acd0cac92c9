package e2e

import (
	"context"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/topology"
)

// chromium returns the headless browser, or skips (fails when
// WALRELAY_REQUIRE_BROWSER=1, as in CI).
func chromium(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("WALRELAY_REQUIRE_BROWSER") == "1" {
		t.Fatal("chromium not found (apt-get install -y chromium)")
	}
	t.Skip("chromium not installed")
	return ""
}

// runChromium runs headless Chromium with the flags that keep it off the
// network and away from the user's profile.
func runChromium(t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	base := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--virtual-time-budget=5000"}
	out, err := exec.CommandContext(ctx, bin, append(base, args...)...).Output()
	if err != nil {
		t.Fatalf("chromium %v: %v", args, err)
	}
	return out
}

// The manager's read-only page draws the live tree in a browser, with no
// external assets: every node name is in the rendered DOM and the
// screenshot is not blank.
func TestManagerPageInChromium(t *testing.T) {
	bin := chromium(t)
	m := startManagerProc(t, "m1", "")
	waitFor(t, 20*time.Second, "manager leader", func() (bool, error) {
		_, err := walrelayCLI("tree", "--manager", m.url)
		return err == nil, nil
	})
	c := &topology.Client{URLs: []string{m.url}}
	ctx := context.Background()
	for _, cmd := range []topology.Command{
		{Op: topology.OpSetPrimary, Name: "pg-main", Conninfo: "host=127.0.0.1 port=1", Timeline: 1},
		{Op: topology.OpRegisterRelay, Name: "relay-east", Conninfo: "host=127.0.0.1 port=2", Zone: "east"},
		{Op: topology.OpRegisterRelay, Name: "relay-west", Conninfo: "host=127.0.0.1 port=3", Zone: "west"},
		{Op: topology.OpAddStandby, Name: "standby-a", Conninfo: "host=127.0.0.1 port=4", Zone: "east", Tier: topology.TierHigh},
		{Op: topology.OpAddStandby, Name: "standby-b", Conninfo: "host=127.0.0.1 port=5", Zone: "west"},
	} {
		if _, err := c.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "placement", func() (bool, error) {
		tr, err := c.Tree(ctx)
		return err == nil && tr.Tree.Nodes["standby-b"].Parent != "", nil
	})
	dom := string(runChromium(t, bin, "--dump-dom", m.url+"/"))
	for _, name := range []string{"pg-main", "relay-east", "relay-west", "standby-a", "standby-b"} {
		if !strings.Contains(dom, `data-node="`+name+`"`) {
			t.Errorf("node %s not drawn; DOM:\n%s", name, dom)
		}
	}
	if !strings.Contains(dom, "epoch ") {
		t.Errorf("no tree header in the DOM:\n%s", dom)
	}
	shots := filepath.Join(os.TempDir(), "walrelay-e2e")
	os.MkdirAll(shots, 0o755)
	shot := filepath.Join(shots, "manager-tree.png")
	runChromium(t, bin, "--window-size=1100,600", "--screenshot="+shot, m.url+"/")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", shot, err)
	}
	colors := map[uint32]bool{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y += 4 {
		for x := b.Min.X; x < b.Max.X; x += 4 {
			r, g, bl, _ := img.At(x, y).RGBA()
			colors[r>>8<<16|g>>8<<8|bl>>8] = true
		}
	}
	if len(colors) < 8 {
		t.Errorf("screenshot %s looks blank (%d colors)", shot, len(colors))
	}
	t.Logf("screenshot saved to %s (%dx%d, %d colors sampled)", shot, b.Dx(), b.Dy(), len(colors))
}

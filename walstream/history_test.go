package walstream

import "testing"

func TestParseHistory(t *testing.T) {
	content := []byte("1\t0/50C28D0\tno recovery target specified\n\n# comment\n2\t0/7000060\tat restore point \"x\"\n")
	h, err := ParseHistory(content)
	if err != nil {
		t.Fatal(err)
	}
	want := []HistoryEntry{{1, 0x50C28D0}, {2, 0x7000060}}
	if len(h) != 2 || h[0] != want[0] || h[1] != want[1] {
		t.Fatalf("ParseHistory = %+v", h)
	}
	if p, ok := SwitchPointOf(h, 2); !ok || p != 0x7000060 {
		t.Errorf("SwitchPointOf(2) = %s %v", p, ok)
	}
	if _, ok := SwitchPointOf(h, 3); ok {
		t.Error("timeline 3 is not an ancestor")
	}
	if next, at, ok := NextTimeline(h, 3, 1); !ok || next != 2 || at != 0x50C28D0 {
		t.Errorf("NextTimeline(1) = %d %s %v", next, at, ok)
	}
	if next, at, ok := NextTimeline(h, 3, 2); !ok || next != 3 || at != 0x7000060 {
		t.Errorf("NextTimeline(2) = %d %s %v", next, at, ok)
	}
	for _, bad := range []string{"x\t0/0\n", "1\tzz\n", "2\t0/10\n1\t0/20\n", "1\n"} {
		if _, err := ParseHistory([]byte(bad)); err == nil {
			t.Errorf("ParseHistory(%q) accepted", bad)
		}
	}
}

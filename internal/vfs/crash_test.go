package vfs

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"slices"
	"strings"
	"testing"
)

// seeds is how many crashes each property is checked on: enough to see
// every outcome the model allows (the rarest, a garbage tail, has a chance
// of about 1/20 a crash).
const seeds = 400

func rng(seed int) *rand.Rand { return rand.New(rand.NewPCG(uint64(seed), 0)) }

// newDurable returns a CrashFS with a durable, empty directory /d.
func newDurable(t *testing.T) *CrashFS {
	t.Helper()
	c := NewCrashFS()
	must(t, c.MkdirAll("/d", 0o700))
	must(t, c.SyncDir("/"))
	return c
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// listing describes the tree under dir: "name:content" for files,
// "name/" for directories, space separated, in name order.
func listing(t *testing.T, fsys FS, dir string) string {
	t.Helper()
	var out []string
	var walk func(dir, prefix string)
	walk = func(dir, prefix string) {
		entries, err := fsys.ReadDir(dir)
		if os.IsNotExist(err) {
			return
		}
		must(t, err)
		for _, e := range entries {
			p := path.Join(dir, e.Name())
			if e.IsDir() {
				out = append(out, prefix+e.Name()+"/")
				walk(p, prefix+e.Name()+"/")
				continue
			}
			b, err := fsys.ReadFile(p)
			must(t, err)
			out = append(out, prefix+e.Name()+":"+string(b))
		}
	}
	walk(dir, "")
	return strings.Join(out, " ")
}

// TestCrashNamespace checks what names survive: every crash must give one
// of want, every one of want must show up, and a clean crash gives clean.
func TestCrashNamespace(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, c *CrashFS)
		want  []string
		clean string
	}{
		{
			name:  "fsynced file, directory not synced",
			setup: func(t *testing.T, c *CrashFS) { writeFile(t, c, "/d/a", "A") },
			want:  []string{"", "a:A"},
			clean: "",
		},
		{
			name: "fsynced file, directory synced",
			setup: func(t *testing.T, c *CrashFS) {
				writeFile(t, c, "/d/a", "A")
				must(t, c.SyncDir("/d"))
			},
			want:  []string{"a:A"},
			clean: "a:A",
		},
		{
			name: "rename, directory not synced",
			setup: func(t *testing.T, c *CrashFS) {
				writeFile(t, c, "/d/a", "A")
				must(t, c.SyncDir("/d"))
				must(t, c.Rename("/d/a", "/d/b"))
			},
			want:  []string{"a:A", "b:A"},
			clean: "a:A",
		},
		{
			name: "rename over a file, directory not synced",
			setup: func(t *testing.T, c *CrashFS) {
				writeFile(t, c, "/d/a", "new")
				writeFile(t, c, "/d/b", "old")
				must(t, c.SyncDir("/d"))
				must(t, c.Rename("/d/a", "/d/b"))
			},
			want:  []string{"a:new b:old", "b:new"},
			clean: "a:new b:old",
		},
		{
			name: "rename, directory synced",
			setup: func(t *testing.T, c *CrashFS) {
				writeFile(t, c, "/d/a", "A")
				must(t, c.SyncDir("/d"))
				must(t, c.Rename("/d/a", "/d/b"))
				must(t, c.SyncDir("/d"))
			},
			want:  []string{"b:A"},
			clean: "b:A",
		},
		{
			name: "create then rename, directory not synced",
			setup: func(t *testing.T, c *CrashFS) {
				writeFile(t, c, "/d/a", "A")
				must(t, c.Rename("/d/a", "/d/b"))
			},
			want:  []string{"", "a:A", "b:A"},
			clean: "",
		},
		{
			name: "rename between directories, only the target synced",
			setup: func(t *testing.T, c *CrashFS) {
				must(t, c.MkdirAll("/d/x", 0o700))
				must(t, c.MkdirAll("/d/y", 0o700))
				must(t, c.SyncDir("/d"))
				writeFile(t, c, "/d/x/a", "A")
				must(t, c.SyncDir("/d/x"))
				must(t, c.Rename("/d/x/a", "/d/y/a"))
				must(t, c.SyncDir("/d/y"))
			},
			want:  []string{"x/ x/a:A y/", "x/ y/ y/a:A"},
			clean: "x/ x/a:A y/",
		},
		{
			name: "rename between directories, both synced",
			setup: func(t *testing.T, c *CrashFS) {
				must(t, c.MkdirAll("/d/x", 0o700))
				must(t, c.MkdirAll("/d/y", 0o700))
				must(t, c.SyncDir("/d"))
				writeFile(t, c, "/d/x/a", "A")
				must(t, c.SyncDir("/d/x"))
				must(t, c.Rename("/d/x/a", "/d/y/a"))
				must(t, c.SyncDir("/d/y"))
				must(t, c.SyncDir("/d/x"))
			},
			want:  []string{"x/ y/ y/a:A"},
			clean: "x/ y/ y/a:A",
		},
		{
			name: "rename between directories, then a new file in the old name",
			setup: func(t *testing.T, c *CrashFS) {
				must(t, c.MkdirAll("/d/x", 0o700))
				must(t, c.MkdirAll("/d/y", 0o700))
				must(t, c.SyncDir("/d"))
				writeFile(t, c, "/d/x/a", "old")
				must(t, c.SyncDir("/d/x"))
				must(t, c.Rename("/d/x/a", "/d/y/a"))
				writeFile(t, c, "/d/x/a", "new")
			},
			// Never "x/ x/a:new y/": the old file lost with no rename.
			want:  []string{"x/ x/a:old y/", "x/ y/ y/a:old", "x/ x/a:new y/ y/a:old"},
			clean: "x/ x/a:old y/",
		},
		{
			name: "remove, directory not synced",
			setup: func(t *testing.T, c *CrashFS) {
				writeFile(t, c, "/d/a", "A")
				must(t, c.SyncDir("/d"))
				must(t, c.Remove("/d/a"))
			},
			want:  []string{"", "a:A"},
			clean: "a:A",
		},
		{
			name: "remove, directory synced",
			setup: func(t *testing.T, c *CrashFS) {
				writeFile(t, c, "/d/a", "A")
				must(t, c.SyncDir("/d"))
				must(t, c.Remove("/d/a"))
				must(t, c.SyncDir("/d"))
			},
			want:  []string{""},
			clean: "",
		},
		{
			name: "new directory, parent not synced",
			setup: func(t *testing.T, c *CrashFS) {
				must(t, c.MkdirAll("/d/sub", 0o700))
				writeFile(t, c, "/d/sub/a", "A")
				must(t, c.SyncDir("/d/sub"))
			},
			want:  []string{"", "sub/ sub/a:A"},
			clean: "",
		},
		{
			name: "operations in order: a later one survives only with the earlier",
			setup: func(t *testing.T, c *CrashFS) {
				writeFile(t, c, "/d/a", "1")
				writeFile(t, c, "/d/b", "2")
				writeFile(t, c, "/d/c", "3")
			},
			want:  []string{"", "a:1", "a:1 b:2", "a:1 b:2 c:3"},
			clean: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newDurable(t)
			tt.setup(t, c)
			seen := make(map[string]bool)
			for seed := range seeds {
				got := listing(t, c.Crash(rng(seed)), "/d")
				if !slices.Contains(tt.want, got) {
					t.Fatalf("seed %d: crash left %q, want one of %q", seed, got, tt.want)
				}
				seen[got] = true
			}
			for _, w := range tt.want {
				if !seen[w] {
					t.Errorf("no crash left %q", w)
				}
			}
			if got := listing(t, c.CrashClean(), "/d"); got != tt.clean {
				t.Errorf("clean crash left %q, want %q", got, tt.clean)
			}
		})
	}
}

// TestCrashContent checks what a file's bytes can be after a crash. classify
// names an outcome, or returns an error for one the model must never give;
// every label in want must show up.
func TestCrashContent(t *testing.T) {
	synced := bytes.Repeat([]byte("a"), 1000)
	tests := []struct {
		name     string
		setup    func(t *testing.T, f File)
		classify func(b []byte) (string, error)
		want     []string
	}{
		{
			name: "unsynced append",
			setup: func(t *testing.T, f File) {
				writeAt(t, f, synced, 0)
				must(t, f.Sync())
				writeAt(t, f, bytes.Repeat([]byte("b"), 5000), 1000)
			},
			classify: func(b []byte) (string, error) {
				if len(b) < 1000 || len(b) > 6000 || !bytes.Equal(b[:1000], synced) {
					return "", fmt.Errorf("synced content lost: %d bytes, prefix %q", len(b), head(b))
				}
				tail := b[1000:]
				switch {
				case len(tail) == 0:
					return "synced only", nil
				case len(tail) == 5000 && onlyBytes(tail, 'b'):
					return "all", nil
				case onlyBytes(tail, 0):
					return "longer, zeros", nil
				case onlyBytes(tail, 'b', 0):
					return "part, zeros", nil
				}
				return "part, garbage", nil
			},
			want: []string{"synced only", "all", "longer, zeros", "part, zeros", "part, garbage"},
		},
		{
			name: "unsynced overwrite tears at sectors",
			setup: func(t *testing.T, f File) {
				writeAt(t, f, bytes.Repeat([]byte("a"), 4096), 0)
				must(t, f.Datasync())
				writeAt(t, f, bytes.Repeat([]byte("b"), 3800), 100)
			},
			classify: func(b []byte) (string, error) {
				if len(b) != 4096 {
					return "", fmt.Errorf("size %d, want 4096", len(b))
				}
				if !onlyBytes(b[:100], 'a') || !onlyBytes(b[3900:], 'a') {
					return "", fmt.Errorf("bytes outside the write changed")
				}
				var old, new int
				for s := 0; s < 4096; s += sectorSize {
					part := b[max(s, 100):min(s+sectorSize, 3900)]
					switch {
					case onlyBytes(part, 'a'):
						old++
					case onlyBytes(part, 'b'):
						new++
					default:
						return "", fmt.Errorf("sector at %d torn inside: %q", s, part)
					}
				}
				switch {
				case new == 0:
					return "old", nil
				case old == 0:
					return "new", nil
				}
				return "torn", nil
			},
			want: []string{"old", "new", "torn"},
		},
		{
			name: "unsynced truncate",
			setup: func(t *testing.T, f File) {
				writeAt(t, f, []byte("abcdef"), 0)
				must(t, f.Sync())
				must(t, f.Truncate(2))
			},
			classify: func(b []byte) (string, error) {
				if s := string(b); s != "abcdef" && s != "ab" {
					return "", fmt.Errorf("content %q, want abcdef or ab", b)
				}
				return string(b), nil
			},
			want: []string{"abcdef", "ab"},
		},
		{
			name: "synced twice",
			setup: func(t *testing.T, f File) {
				writeAt(t, f, synced, 0)
				must(t, f.Sync())
				writeAt(t, f, []byte("bb"), 1000)
				must(t, f.Datasync())
			},
			classify: func(b []byte) (string, error) {
				if want := append(slices.Clone(synced), "bb"...); !bytes.Equal(b, want) {
					return "", fmt.Errorf("content %q..., %d bytes: synced bytes lost", head(b), len(b))
				}
				return "all", nil
			},
			want: []string{"all"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newDurable(t)
			f := create(t, c, "/d/f", os.O_RDWR|os.O_CREATE)
			must(t, c.SyncDir("/d"))
			tt.setup(t, f)
			seen := make(map[string]bool)
			for seed := range seeds {
				b, err := c.Crash(rng(seed)).ReadFile("/d/f")
				must(t, err)
				label, err := tt.classify(b)
				if err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				seen[label] = true
			}
			for _, w := range tt.want {
				if !seen[w] {
					t.Errorf("no crash gave %q", w)
				}
			}
		})
	}
}

func writeAt(t *testing.T, f File, b []byte, off int64) {
	t.Helper()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func onlyBytes(b []byte, allowed ...byte) bool {
	for _, x := range b {
		if !slices.Contains(allowed, x) {
			return false
		}
	}
	return true
}

func head(b []byte) []byte { return b[:min(len(b), 16)] }

// busyFS builds the same CrashFS every time, with unsynced operations of
// every kind in flight.
func busyFS(t *testing.T) *CrashFS {
	c := newDurable(t)
	for i := range 6 {
		name := fmt.Sprintf("/d/f%d", i)
		f := create(t, c, name, os.O_RDWR|os.O_CREATE)
		writeAt(t, f, bytes.Repeat([]byte{byte('a' + i)}, 700*(i+1)), 0)
		if i%2 == 0 {
			must(t, f.Sync())
		}
		writeAt(t, f, bytes.Repeat([]byte{'z'}, 1500), int64(300*i))
		mustClose(t, f)
		if i == 2 {
			must(t, c.SyncDir("/d"))
		}
	}
	must(t, c.Rename("/d/f1", "/d/f4"))
	must(t, c.Remove("/d/f0"))
	must(t, c.MkdirAll("/d/sub", 0o700))
	writeFile(t, c, "/d/sub/x", "x")
	return c
}

func TestCrashReproducible(t *testing.T) {
	a, b := busyFS(t), busyFS(t)
	distinct := make(map[string]bool)
	for seed := range 50 {
		first := listing(t, a.Crash(rng(seed)), "/")
		if again := listing(t, a.Crash(rng(seed)), "/"); again != first {
			t.Fatalf("seed %d: two crashes of one FS differ:\n%q\n%q", seed, first, again)
		}
		if other := listing(t, b.Crash(rng(seed)), "/"); other != first {
			t.Fatalf("seed %d: crashes of two equal FSs differ:\n%q\n%q", seed, first, other)
		}
		distinct[first] = true
	}
	if len(distinct) < 10 {
		t.Errorf("50 seeds gave only %d distinct crashes", len(distinct))
	}
	// Crashing leaves the original as it was.
	want := listing(t, busyFS(t), "/")
	if got := listing(t, a, "/"); got != want {
		t.Errorf("crashing changed the FS:\n%q\nwant\n%q", got, want)
	}
}

// TestCrashClone checks that a clone is an FS of its own: durable as it
// stands, and crashable again.
func TestCrashClone(t *testing.T) {
	c := newDurable(t)
	writeFile(t, c, "/d/a", "A")
	must(t, c.SyncDir("/d"))
	f := create(t, c, "/d/a", os.O_RDWR)
	clone := c.Crash(rng(1))
	writeAt(t, f, []byte("B"), 0) // the handle writes to the original only
	wantFile(t, clone, "/d/a", "A")
	wantFile(t, clone.CrashClean(), "/d/a", "A")
	writeFile(t, clone, "/d/b", "B")
	if got := listing(t, clone.CrashClean(), "/d"); got != "a:A" {
		t.Errorf("clean crash of the clone left %q, want a:A", got)
	}
	wantFile(t, c, "/d/a", "B")
}

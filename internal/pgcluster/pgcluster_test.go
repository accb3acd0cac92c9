package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestFreePort(t *testing.T) {
	p, err := FreePort()
	if err != nil || p <= 0 {
		t.Fatalf("FreePort = %d, %v", p, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("port %d not free: %v", p, err)
	}
	ln.Close()
}

func TestCompareSegments(t *testing.T) {
	const seg1, seg2, seg3 = "000000010000000000000001", "000000010000000000000002", "000000010000000000000003"
	type files map[string]string
	tests := []struct {
		name    string
		a, b    files
		want    int
		wantErr string // substring; "" = no error
	}{
		{"equal", files{seg1: "same", seg2: "also"}, files{seg1: "same", seg2: "also"}, 2, ""},
		{"partial and one-sided ignored",
			files{seg1: "same", seg2 + ".partial": "x", seg3: "only in a", "00000002.history": "a"},
			files{seg1: "same", seg2 + ".partial": "y", "00000002.history": "b"}, 1, ""},
		{"differs", files{seg1: "same", seg3: "only in a"}, files{seg1: "same", seg3: "only in A"}, 1,
			seg3 + " differs at offset 8"},
		{"prefix", files{seg1: "abc"}, files{seg1: "abcd"}, 0, seg1 + " differs at offset 3"},
		{"lower-case name is not a segment", files{strings.ToLower("00000001000000000000000A"): "x"},
			files{strings.ToLower("00000001000000000000000A"): "x"}, 0, "no completed segment in common"},
		{"nothing in common", files{seg1: "x"}, files{seg2: "x"}, 0, "no completed segment in common"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := t.TempDir(), t.TempDir()
			for dir, fs := range map[string]files{a: tt.a, b: tt.b} {
				for name, content := range fs {
					if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
						t.Fatal(err)
					}
				}
			}
			n, err := CompareSegments(a, b)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("CompareSegments error = %v, want %q", err, tt.wantErr)
			}
			if n != tt.want {
				t.Errorf("CompareSegments = %d, want %d", n, tt.want)
			}
		})
	}
}

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"0/0", 0, true},
		{"16/B374D848", 0x16B374D848, true},
		{"ffffffff/ffffffff", 1<<64 - 1, true},
		{"0/1000000", 0x1000000, true},
		{"", 0, false},
		{"16", 0, false},
		{"1/2/3", 0, false},
		{"100000000/0", 0, false},
		{"-1/0", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseLSN(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseLSN(%q) = %X, %v; want %X, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if tt.ok {
			if back, _ := ParseLSN(FormatLSN(got)); back != got {
				t.Errorf("ParseLSN(FormatLSN(%X)) = %X", got, back)
			}
		}
	}
}

func TestConfLines(t *testing.T) {
	got := confLines(map[string]string{
		"port":                    "5433",
		"unix_socket_directories": "",
		"primary_conninfo":        `host=h password='it''s' x=a\b`,
		"log_line_prefix":         "%m\t[%p] ",
	})
	want := `log_line_prefix = '%m\t[%p] '
port = '5433'
primary_conninfo = 'host=h password=''it''''s'' x=a\\b'
unix_socket_directories = ''
`
	if got != want {
		t.Errorf("confLines =\n%s\nwant\n%s", got, want)
	}
}

func TestFindBinDirEnv(t *testing.T) {
	t.Setenv("WALRELAY_PG_BIN", t.TempDir())
	_, err := FindBinDir()
	if !errors.Is(err, ErrNotInstalled) {
		t.Fatalf("FindBinDir with an empty WALRELAY_PG_BIN = %v, want ErrNotInstalled", err)
	}
}

// TestClusterLifecycle runs a real server: settings with awkward quoting
// reach it, and Stop is safe before Start, twice, and after Kill.
func TestClusterLifecycle(t *testing.T) {
	bin, err := FindBinDir()
	if err != nil {
		if os.Getenv("WALRELAY_REQUIRE_PG") == "1" {
			t.Fatalf("WALRELAY_REQUIRE_PG=1: %v", err)
		}
		t.Skipf("PostgreSQL not available (WALRELAY_REQUIRE_PG=1 makes this a failure): %v", err)
	}
	if testing.Short() {
		t.Skip("starts PostgreSQL: skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	odd := `it's a \ "test"`
	c, err := InitPrimary(ctx, Options{BinDir: bin, BaseDir: t.TempDir(), Name: "lifecycle",
		Conf: map[string]string{"cluster_name": odd}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop before Start: %v", err)
	}
	for round := range 2 { // the second start follows a Kill: crash recovery
		if err := c.Start(ctx); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		conn, err := c.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var name string
		err = conn.QueryRow(ctx, "SHOW cluster_name").Scan(&name)
		conn.Close(ctx)
		if err != nil || name != odd {
			t.Fatalf("cluster_name = %q, %v; want %q", name, err, odd)
		}
		if lsn, err := c.CurrentLSN(ctx); err != nil || lsn == 0 {
			t.Fatalf("CurrentLSN = %X, %v", lsn, err)
		}
		if err := c.Kill(); err != nil {
			t.Fatalf("Kill: %v", err)
		}
		if err := c.Stop(ctx); err != nil {
			t.Fatalf("Stop after Kill: %v", err)
		}
	}
}

// FreePort hands out distinct, bindable ports, below the kernel's
// ephemeral range where it has room, so that no outgoing connection takes
// one before its server binds it.
func TestFreePortOutsideEphemeralRange(t *testing.T) {
	_, high := portRange()
	seen := map[int]bool{}
	for i := 0; i < 200; i++ {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if high > 0 && p >= high {
			t.Fatalf("port %d is in the ephemeral range (from %d)", p, high)
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Fatalf("port %d: %v", p, err)
		}
		ln.Close()
	}
}

package pgcluster

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
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
	a, b := t.TempDir(), t.TempDir()
	write := func(dir, name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(a, "000000010000000000000001", "same")
	write(b, "000000010000000000000001", "same")
	write(a, "000000010000000000000002.partial", "x")
	write(b, "000000010000000000000002.partial", "y")
	write(a, "000000010000000000000003", "only in a")
	if n, err := CompareSegments(a, b); err != nil || n != 1 {
		t.Fatalf("CompareSegments = %d, %v", n, err)
	}
	write(b, "000000010000000000000003", "only in A")
	_, err := CompareSegments(a, b)
	if err == nil || !strings.Contains(err.Error(), "000000010000000000000003 differs at offset 8") {
		t.Fatalf("difference not reported: %v", err)
	}
	if _, err := CompareSegments(t.TempDir(), b); err == nil {
		t.Error("no common segment: want an error")
	}
}

func TestParseLSN(t *testing.T) {
	if v, err := ParseLSN("16/B374D848"); err != nil || v != 0x16B374D848 {
		t.Errorf("ParseLSN = %x, %v", v, err)
	}
}

package walstream

import "testing"

func TestSegmentFileName(t *testing.T) {
	tests := []struct {
		tli     TimeLineID
		segNo   uint64
		segSize uint64
		want    string
	}{
		{1, 1, 16 << 20, "000000010000000000000001"},
		{1, 0x100, 16 << 20, "000000010000000100000000"},
		{2, 0x1FF, 16 << 20, "0000000200000001000000FF"},
		{1, 5, 1 << 30, "000000010000000100000001"},
		{0x1A, 3, 64 << 20, "0000001A0000000000000003"},
	}
	for _, tt := range tests {
		got := SegmentFileName(tt.tli, tt.segNo, tt.segSize)
		if got != tt.want {
			t.Errorf("SegmentFileName(%d, %d, %d) = %s, want %s", tt.tli, tt.segNo, tt.segSize, got, tt.want)
		}
		tli, no, err := ParseSegmentFileName(got, tt.segSize)
		if err != nil || tli != tt.tli || no != tt.segNo {
			t.Errorf("ParseSegmentFileName(%s) = %d, %d, %v", got, tli, no, err)
		}
	}
	for _, bad := range []string{"", "00000001000000000000001", "0000000100000000000001XX", "000000000000000000000001", "000000010000000000000100"} {
		if _, _, err := ParseSegmentFileName(bad, 16<<20); err == nil {
			t.Errorf("ParseSegmentFileName(%q) accepted", bad)
		}
	}
}

func TestHistoryFileName(t *testing.T) {
	if got := HistoryFileName(2); got != "00000002.history" {
		t.Errorf("HistoryFileName(2) = %s", got)
	}
	if got := HistoryFileName(0x1A); got != "0000001A.history" {
		t.Errorf("HistoryFileName(26) = %s", got)
	}
}

func TestSegmentSize(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want uint64
	}{{"16MB", 16 << 20}, {"1GB", 1 << 30}, {"64MB", 64 << 20}, {"1024kB", 1 << 20}} {
		got, err := ParseSegmentSize(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseSegmentSize(%q) = %d, %v", tt.in, got, err)
		}
	}
	for _, bad := range []string{"16777216", "3MB", "2GB", "MB", "16 XB", "512kB"} {
		if _, err := ParseSegmentSize(bad); err == nil {
			t.Errorf("ParseSegmentSize(%q) accepted", bad)
		}
	}
	if got := FormatSegmentSize(16 << 20); got != "16MB" {
		t.Errorf("FormatSegmentSize = %s", got)
	}
	if got := FormatSegmentSize(1 << 30); got != "1GB" {
		t.Errorf("FormatSegmentSize = %s", got)
	}
}

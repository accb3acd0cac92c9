package walstream

import "testing"

func TestParseLSN(t *testing.T) {
	tests := []struct {
		in   string
		want LSN
		ok   bool
	}{
		{"0/0", 0, true},
		{"0/3000000", 0x3000000, true},
		{"16/B374D848", 0x16B374D848, true},
		{"ffffffff/ffffffff", 0xffffffffffffffff, true},
		{"0/3000000 ", 0, false},
		{"03000000", 0, false},
		{"/1", 0, false},
		{"1/", 0, false},
		{"100000000/0", 0, false},
		{"g/0", 0, false},
		{"-1/0", 0, false},
	}
	for _, tt := range tests {
		got, err := ParseLSN(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("ParseLSN(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestLSNString(t *testing.T) {
	for _, tt := range []struct {
		lsn  LSN
		want string
	}{{0, "0/0"}, {0x3000000, "0/3000000"}, {0x16B374D848, "16/B374D848"}} {
		if got := tt.lsn.String(); got != tt.want {
			t.Errorf("%d.String() = %q, want %q", uint64(tt.lsn), got, tt.want)
		}
		back, err := ParseLSN(tt.want)
		if err != nil || back != tt.lsn {
			t.Errorf("round trip of %q: %v %v", tt.want, back, err)
		}
	}
}

func TestLSNSegmentMath(t *testing.T) {
	const seg = 16 << 20
	l := LSN(0x3143BB0)
	if got := l.SegmentStart(seg); got != 0x3000000 {
		t.Errorf("SegmentStart = %s", got)
	}
	if got := l.SegmentNo(seg); got != 3 {
		t.Errorf("SegmentNo = %d", got)
	}
	if got := l.SegmentOffset(seg); got != 0x143BB0 {
		t.Errorf("SegmentOffset = %#x", got)
	}
}

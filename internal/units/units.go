// Package units parses the sizes that flags and API parameters share
// (--retain, --max-catchup-rate, ?max_lag=16MB).
package units

import (
	"fmt"
	"strings"
)

// ParseSize parses sizes like 512MB, 1GB, 1048576 (binary multiples).
func ParseSize(s string) (uint64, error) {
	u := strings.TrimSpace(strings.ToUpper(s))
	mult := uint64(1)
	for _, unit := range []struct {
		suffix string
		mult   uint64
	}{{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(u, unit.suffix) {
			u, mult = strings.TrimSpace(strings.TrimSuffix(u, unit.suffix)), unit.mult
			break
		}
	}
	var n uint64
	if _, err := fmt.Sscanf(u, "%d", &n); err != nil || fmt.Sprint(n) != u {
		return 0, fmt.Errorf("invalid size %q: want a number with an optional unit (512MB, 2GB)", s)
	}
	return n * mult, nil
}

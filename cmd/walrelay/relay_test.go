package main

import (
	"testing"

	"github.com/walrelay/walrelay/walstream"
)

// Every value --store-compression takes opens a store.
func TestStoreCompressionValuesOpenAStore(t *testing.T) {
	for _, v := range []string{"zstd", "s2", "off"} {
		s, err := walstream.OpenStore(t.TempDir(), storeOptions(v, 0, nil))
		if err != nil {
			t.Errorf("--store-compression %s: %v", v, err)
			continue
		}
		s.Close()
	}
}

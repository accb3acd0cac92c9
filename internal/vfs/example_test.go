package vfs_test

import (
	"fmt"
	"math/rand/v2"
	"os"

	"github.com/walrelay/walrelay/internal/vfs"
)

// A crash test writes through a CrashFS, then checks what every crash could
// leave, reopening on the clone as a restarted process would.
func ExampleCrashFS() {
	c := vfs.NewCrashFS()
	c.MkdirAll("/store", 0o700)
	c.SyncDir("/")
	f, _ := c.OpenFile("/store/wal", os.O_RDWR|os.O_CREATE, 0o600)
	c.SyncDir("/store") // the name is durable
	f.Write([]byte("acked"))
	f.Datasync()             // so are these bytes
	f.Write([]byte(" more")) // these may be lost, zeroed or torn
	for seed := range uint64(100) {
		crashed := c.Crash(rand.New(rand.NewPCG(seed, 0)))
		b, _ := crashed.ReadFile("/store/wal")
		if string(b[:5]) != "acked" {
			fmt.Println("lost acknowledged WAL")
		}
	}
	b, _ := c.CrashClean().ReadFile("/store/wal")
	fmt.Printf("%q\n", b)
	// Output: "acked"
}

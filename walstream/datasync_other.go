//go:build !linux

package walstream

import "os"

func datasync(f *os.File) error { return f.Sync() }

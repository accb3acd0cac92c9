//go:build !linux

package vfs

import "os"

// datasync falls back to fsync where fdatasync is missing (darwin's fsync
// is F_FULLFSYNC in package os, which is stronger).
func datasync(f *os.File) error { return f.Sync() }

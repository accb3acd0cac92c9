// Package vfs is the file system the segment store and the slot files are
// written through, so that they can be tested under simulated power loss.
//
// What survives a power loss is only what was fsynced: the unsynced tail of
// a file can come back zeroed, stale or torn at sector boundaries, and a
// name created, renamed or removed in a directory that was not fsynced since
// may or may not be there. Such bugs do not show on a machine that keeps
// running, and pulling the plug in a test is neither possible nor
// reproducible. So the store takes an FS: OS in production, and in tests a
// CrashFS that keeps apart what is durable from what is merely written and,
// on Crash, returns any state a power loss could leave, chosen by a seeded
// random source so that a failure can be replayed (pebble's vfs.MemFS and
// its crash clones work the same way).
//
// The interfaces cover exactly the calls the store and the slot files make
// on package os; anything else stays out until a caller needs it.
package vfs

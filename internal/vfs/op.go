package vfs

// Op names an operation of FS or File, for fault injection.
type Op int

// The operations a CrashFS fault hook sees. ReadFile is an OpOpen followed
// by an OpRead; WriteFileAtomic is the sequence of calls it makes.
const (
	OpOpen Op = iota + 1
	OpRead
	OpWrite
	OpSync
	OpDatasync
	OpTruncate
	OpStat
	OpClose
	OpReadDir
	OpMkdirAll
	OpRename
	OpRemove
	OpSyncDir
)

var opNames = [...]string{
	OpOpen:     "open",
	OpRead:     "read",
	OpWrite:    "write",
	OpSync:     "sync",
	OpDatasync: "fdatasync",
	OpTruncate: "truncate",
	OpStat:     "stat",
	OpClose:    "close",
	OpReadDir:  "readdir",
	OpMkdirAll: "mkdir",
	OpRename:   "rename",
	OpRemove:   "remove",
	OpSyncDir:  "syncdir",
}

// String returns the name used as the Op of the *fs.PathError.
func (o Op) String() string {
	if o > 0 && int(o) < len(opNames) {
		return opNames[o]
	}
	return "unknown"
}

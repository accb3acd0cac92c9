package walstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/walrelay/walrelay/internal/vfs"
)

// Identity is what makes WAL from two servers interchangeable: the system
// identifier from pg_control and the WAL segment size. It never changes
// under a store.
type Identity struct {
	SystemID    uint64 `json:"system_id,string"`
	SegmentSize uint64 `json:"segment_size"`
}

// IdentityMismatchError reports an upstream whose identity differs from the
// store's. Both values are in the message so an operator can see which
// cluster the relay was pointed at.
type IdentityMismatchError struct {
	Store, Upstream Identity
	// StoreVersion and UpstreamVersion are the server_version the store's
	// WAL came from and the upstream's ("" when unknown).
	StoreVersion, UpstreamVersion string
}

func (e *IdentityMismatchError) Error() string {
	msg := fmt.Sprintf("upstream has system identifier %d and WAL segment size %d, the store holds WAL of system identifier %d with segment size %d",
		e.Upstream.SystemID, e.Upstream.SegmentSize, e.Store.SystemID, e.Store.SegmentSize)
	if e.StoreVersion != "" && e.UpstreamVersion != "" && MajorVersion(e.StoreVersion) != MajorVersion(e.UpstreamVersion) {
		msg += fmt.Sprintf(" (upstream is PostgreSQL %s, the store's WAL came from PostgreSQL %s: WAL of one major cannot continue another's; after pg_upgrade, give the relay a new --data-dir)",
			e.UpstreamVersion, e.StoreVersion)
	}
	return msg
}

// MajorVersion is the major of a server_version: 15 for "15.18 (Debian
// 15.18-0+deb12u1)", 18 for "18.4"; 0 when there is none.
func MajorVersion(serverVersion string) int {
	n := 0
	for _, c := range serverVersion {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// ErrWALRemoved is matched (errors.Is) by every WALRemovedError.
var ErrWALRemoved = errors.New("requested WAL segment has already been removed")

// WALRemovedError reports a read of a segment the store does not hold.
type WALRemovedError struct {
	Segment string // file name, as PostgreSQL names it in its error
}

func (e *WALRemovedError) Error() string {
	return fmt.Sprintf("requested WAL segment %s has already been removed", e.Segment)
}

func (e *WALRemovedError) Is(target error) bool { return target == ErrWALRemoved }

// StoreOptions configures a Store.
type StoreOptions struct {
	Logger *slog.Logger
	// TailBytes is how much of the newest WAL is kept in memory so that
	// children at the tip are served without reading files. Rounded up to
	// whole segments, at least one. Default 64 MiB.
	TailBytes uint64
	// Compress rewrites completed segments as checksummed compressed frames
	// (see zsegment.go); RunCompactor does the work.
	Compress bool
	// Codec is CodecZstd (the default) or CodecS2. Files of either are read
	// whatever it is.
	Codec string
	// FS is where the store's files live: the operating system's by
	// default; tests give a crashable one (vfs.CrashFS).
	FS vfs.FS
}

const identityFile = "identity.json"

// metaFile is what identity.json holds.
type metaFile struct {
	Identity
	// ServerVersion is the upstream's server_version, announced to children.
	ServerVersion string `json:"server_version,omitempty"`
}

// Store is a directory of WAL segment files named and laid out as in
// PostgreSQL's pg_wal, written by one upstream client and read concurrently
// by any number of children. See doc.go for the format and guarantees.
type Store struct {
	dir  string
	fs   vfs.FS
	log  *slog.Logger
	tail uint64

	mu       sync.Mutex
	meta     metaFile
	hasMeta  bool
	segs     map[segKey]*segment
	history  map[TimeLineID][]byte
	cache    *frameCache
	compress bool
	codec    byte
	memSegs  []*segment             // segments whose bytes are in memory, oldest first
	retired  []*memBuf              // memory of segments that left the tail, for reuse
	nRetired atomic.Int32           // len(retired), for prepareMemBuf
	fresh    atomic.Pointer[memBuf] // a new buffer, its pages touched (prepareMemBuf)
	writer   *segment               // the .partial segment being written, or nil
	writeTLI TimeLineID
	writeEnd LSN // end of what was written (not necessarily synced)
	closed   bool
	// spare delivers the outcome of preparing the next segment's file
	// (spare.go); nil when none is under way. Writer only.
	spare   chan spareResult
	spareWG sync.WaitGroup
	// inlineSpare prepares the spare on the writer's path: the crash
	// tests need one order of file operations to replay a seed.
	inlineSpare bool
	// unprepared makes no memory ahead (prepareMemBuf), for the benchmark
	// that measures what that saves.
	unprepared bool

	// durable is the end of what is fsynced, on durableTLI. Published after
	// fsync, read without the lock by children.
	durable    atomic.Uint64
	durableTLI atomic.Uint32
	notify     notifier

	// recovered is what recovery found at the tail of the newest partial
	// segment, until the upstream client has checked it against what the
	// parent was told (TakeRecoveredTail).
	recovered *RecoveredTail
}

// RecoveredTail is what opening the store found at the end of its WAL.
type RecoveredTail struct {
	Timeline TimeLineID
	// End is the end of the last whole, valid record: the store's end.
	End LSN
	// NextEnd is where the record cut after End would have ended by its
	// own length field (0 when none starts there): when it lies past what
	// was acknowledged, only a record whose end was never written was cut.
	NextEnd LSN
	// Damage says what invalid bytes ended the WAL ("" when it just ends).
	Damage string
}

// TakeRecoveredTail returns what recovery found at the end of the WAL, once;
// nil when the store opened empty or it was taken already.
func (s *Store) TakeRecoveredTail() *RecoveredTail {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.recovered
	s.recovered = nil
	return r
}

type segKey struct {
	tli TimeLineID
	no  uint64
}

// segment is one file of the store.
type segment struct {
	key  segKey
	f    vfs.File // pread-safe; O_RDWR while it is the writer's
	path string
	// durable counts the bytes of this file that are fsynced and may be
	// served. Published after fsync.
	durable  atomic.Int64
	size     int64     // bytes written (writer only)
	flushed  int64     // bytes of size written to the file (writer only; see Store.flush)
	filled   bool      // the file is zero-filled to full size (writer only)
	complete bool      // full size and renamed to its final name
	mem      []byte    // segment-sized copy while in the memory tail (buf.b); guarded by Store.mu
	buf      *memBuf   // owner of mem, recycled once the segment leaves the tail; guarded by Store.mu
	z        *zsegment // set when the file is compressed (*.wz); guarded by Store.mu
}

// OpenStore opens (creating if needed) the store in dir, recovering from a
// crash: leftovers of interrupted renames are removed and a torn tail of the
// newest .partial file is truncated to its last valid page.
func OpenStore(dir string, opts StoreOptions) (*Store, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.TailBytes == 0 {
		opts.TailBytes = 64 << 20
	}
	codec, err := codecID(opts.Codec)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	if opts.FS == nil {
		opts.FS = vfs.OS()
	}
	s := &Store{
		dir:      dir,
		fs:       opts.FS,
		log:      opts.Logger,
		tail:     opts.TailBytes,
		segs:     make(map[segKey]*segment),
		history:  make(map[TimeLineID][]byte),
		cache:    newFrameCache(256), // 64 MiB of decoded frames
		compress: opts.Compress,
		codec:    codec,
	}
	s.notify.init()
	if err := s.fs.MkdirAll(s.walDir(), 0o700); err != nil {
		return nil, fmt.Errorf("create store %s: %w", dir, err)
	}
	// The directories' own names must survive a power loss too, as
	// PostgreSQL fsyncs pg_wal's parent.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := s.fs.SyncDir(d); err != nil {
			return nil, fmt.Errorf("sync %s: %w", d, err)
		}
	}
	b, err := s.fs.ReadFile(filepath.Join(dir, identityFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("read store identity: %w", err)
	default:
		if err := json.Unmarshal(b, &s.meta); err != nil {
			return nil, fmt.Errorf("parse %s: %w", filepath.Join(dir, identityFile), err)
		}
		if !ValidSegmentSize(s.meta.SegmentSize) {
			return nil, fmt.Errorf("store %s: invalid segment size %d", dir, s.meta.SegmentSize)
		}
		s.hasMeta = true
	}
	if err := s.recover(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) walDir() string { return filepath.Join(s.dir, "wal") }

// recover scans the wal directory and rebuilds the in-memory index.
func (s *Store) recover() error {
	entries, err := s.fs.ReadDir(s.walDir())
	if err != nil {
		return fmt.Errorf("read %s: %w", s.walDir(), err)
	}
	var partials []string
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".tmp"):
			if err := s.fs.Remove(filepath.Join(s.walDir(), name)); err != nil {
				return fmt.Errorf("remove leftover %s: %w", name, err)
			}
		case strings.HasSuffix(name, ".history"):
			var tli uint32
			if _, err := fmt.Sscanf(name, "%08X.history", &tli); err != nil || len(name) != 16 {
				return fmt.Errorf("unexpected file %s in store", name)
			}
			b, err := s.fs.ReadFile(filepath.Join(s.walDir(), name))
			if err != nil {
				return fmt.Errorf("read history %s: %w", name, err)
			}
			s.history[TimeLineID(tli)] = b
		case strings.HasSuffix(name, PartialSuffix):
			partials = append(partials, name)
		default:
			if !s.hasMeta {
				return fmt.Errorf("store %s has segment %s but no %s", s.dir, name, identityFile)
			}
			if err := s.openComplete(name); err != nil {
				return err
			}
		}
	}
	// Names sort by timeline, then segment: the last partial is the
	// writer's; earlier ones end old timelines.
	sort.Strings(partials)
	partials, droppedNewest, err := s.dropUnusedPartials(partials)
	if err != nil {
		return err
	}
	for i, name := range partials {
		if err := s.openPartial(name, i == len(partials)-1); err != nil {
			return err
		}
	}
	// Resume writing after the newest segment of the newest timeline.
	var newest *segment
	for _, seg := range s.segs {
		if newest == nil || seg.key.tli > newest.key.tli || (seg.key.tli == newest.key.tli && seg.key.no > newest.key.no) {
			newest = seg
		}
	}
	if newest != nil {
		s.writeTLI = newest.key.tli
		s.writeEnd = LSN(newest.key.no*s.meta.SegmentSize + uint64(newest.size))
		if !newest.complete {
			s.writer = newest
		}
		if droppedNewest && s.recovered == nil {
			s.recovered = &RecoveredTail{Timeline: s.writeTLI, End: s.writeEnd}
		}
		s.durable.Store(uint64(s.writeEnd))
		s.durableTLI.Store(uint32(s.writeTLI))
		s.log.Info("store recovered", "dir", s.dir, "timeline", s.writeTLI, "durable_lsn", s.writeEnd.String(),
			"segments", len(s.segs))
	}
	return nil
}

// dropUnusedPartials removes the spares among the sorted partials: files
// that hold nothing but zeros and follow a segment the store holds on their
// timeline (see spare.go). A spare is prepared under the next segment's name
// while the writer's segment fills, so without this the writer's segment
// would look like the end of an old timeline. A segment the writer had begun
// but whose every byte was lost is all zeros too: dropping it leaves the
// store ending where that segment starts, which is where it would resume, and
// the recovered tail says so (so that acknowledged WAL found lost is still
// reported). It returns the partials that remain.
func (s *Store) dropUnusedPartials(partials []string) (kept []string, droppedNewest bool, err error) {
	if !s.hasMeta {
		return partials, false, nil
	}
	names := make(map[segKey]bool, len(partials))
	keys := make([]segKey, len(partials))
	for i, name := range partials {
		tli, no, err := ParseSegmentFileName(strings.TrimSuffix(name, PartialSuffix), s.meta.SegmentSize)
		if err != nil {
			return nil, false, fmt.Errorf("store %s: unexpected file %s", s.dir, name)
		}
		keys[i] = segKey{tli, no}
		names[keys[i]] = true
	}
	kept = partials[:0]
	for i, name := range partials {
		k := keys[i]
		if k.no == 0 {
			kept = append(kept, name)
			continue
		}
		prev := segKey{k.tli, k.no - 1}
		if _, held := s.segs[prev]; !held && !names[prev] {
			kept = append(kept, name)
			continue
		}
		zero, err := s.allZeroFile(filepath.Join(s.walDir(), name))
		if err != nil {
			return nil, false, err
		}
		if !zero {
			kept = append(kept, name)
			continue
		}
		if err := s.fs.Remove(filepath.Join(s.walDir(), name)); err != nil {
			return nil, false, fmt.Errorf("remove unused segment file %s: %w", name, err)
		}
		droppedNewest = i == len(partials)-1
	}
	return kept, droppedNewest, nil
}

// allZeroFile reports whether the file at path holds only zero bytes. A
// segment holding WAL begins with a page header, so only a spare is read
// beyond its first chunk.
func (s *Store) allZeroFile(path string) (bool, error) {
	f, err := s.fs.Open(path)
	if err != nil {
		return false, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); ; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		if !allZero(buf[:n]) {
			return false, nil
		}
		if errors.Is(err, io.EOF) {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("read %s: %w", path, err)
		}
	}
}

func (s *Store) openComplete(name string) error {
	base, compressed := strings.CutSuffix(name, CompressedSuffix)
	tli, no, err := ParseSegmentFileName(base, s.meta.SegmentSize)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	path := filepath.Join(s.walDir(), name)
	if old, ok := s.segs[segKey{tli, no}]; ok {
		// A crash between compressing a segment and removing the raw
		// file: keep the compressed one.
		keep, drop := old, path
		if compressed {
			keep, drop = nil, old.path
			old.f.Close()
		}
		if err := s.fs.Remove(drop); err != nil {
			return fmt.Errorf("remove duplicate %s: %w", drop, err)
		}
		if keep != nil {
			return nil
		}
	}
	f, err := s.fs.Open(path)
	if err != nil {
		return fmt.Errorf("open segment %s: %w", name, err)
	}
	if compressed {
		z, err := openZSegment(f, s.meta.SegmentSize)
		if err != nil {
			f.Close()
			return fmt.Errorf("open compressed segment %s: %w", name, err)
		}
		seg := &segment{key: segKey{tli, no}, f: f, path: path, size: int64(s.meta.SegmentSize), complete: true, z: z}
		seg.durable.Store(seg.size)
		s.segs[seg.key] = seg
		return nil
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat segment %s: %w", name, err)
	}
	if uint64(st.Size()) != s.meta.SegmentSize {
		f.Close()
		return fmt.Errorf("segment %s has %d bytes, want %d", name, st.Size(), s.meta.SegmentSize)
	}
	seg := &segment{key: segKey{tli, no}, f: f, path: path, size: st.Size(), complete: true}
	seg.durable.Store(st.Size())
	s.segs[seg.key] = seg
	return nil
}

// openPartial validates a .partial file page by page and truncates it after
// the last page whose header is intact. Only the newest partial is kept for
// writing; an older one can only be left by a crash between writing a
// segment's last byte and the rename, and then it is complete.
func (s *Store) openPartial(name string, newest bool) error {
	base := strings.TrimSuffix(name, PartialSuffix)
	tli, no, err := ParseSegmentFileName(base, s.meta.SegmentSize)
	if err != nil || !s.hasMeta {
		return fmt.Errorf("store %s: unexpected file %s", s.dir, name)
	}
	path := filepath.Join(s.walDir(), name)
	if _, ok := s.segs[segKey{tli, no}]; ok {
		// The rename happened; the partial is a leftover.
		return s.fs.Remove(path)
	}
	f, err := s.fs.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open segment %s: %w", name, err)
	}
	data, err := io.ReadAll(io.LimitReader(f, int64(s.meta.SegmentSize)))
	if err != nil {
		f.Close()
		return fmt.Errorf("read segment %s: %w", name, err)
	}
	// After a power loss the unsynced tail may be zeroed, stale or torn
	// inside a page: keep WAL up to the end of the last whole record, as
	// PostgreSQL's own recovery does, and never serve what follows.
	prev, err := s.recoveredSegment(tli, no-1)
	if err != nil {
		f.Close()
		return err
	}
	segStart := LSN(no * s.meta.SegmentSize)
	rt := validRecordEnd(data, prev, segStart, s.meta.Identity)
	valid, why := rt.valid, rt.why
	if newest {
		s.recovered = &RecoveredTail{Timeline: tli, End: segStart + LSN(valid), NextEnd: rt.nextEnd, Damage: rt.why}
	}
	if valid < len(data) && !allZero(data[valid:]) {
		if why == "" {
			why = "the WAL ends in a record not complete"
		}
		s.log.Warn("cutting the WAL tail after the last valid record", "segment", name, "size", len(data),
			"valid_lsn", (segStart + LSN(valid)).String(), "reason", why)
	}
	filled := false
	if newest {
		// Writing resumes here: zero what follows the valid WAL, to the
		// full size, as in a new segment.
		// On a full disk, cut it instead: appends then grow the file,
		// which is as durable, only dearer to sync.
		err := zeroRange(f, int64(valid), int64(s.meta.SegmentSize))
		filled = err == nil
		if IsNoSpace(err) {
			s.log.Warn("no space to zero-fill the rest of the newest segment; it grows as it is written", "segment", name, "err", err)
			err = f.Truncate(int64(valid))
		}
		if err != nil {
			f.Close()
			return fmt.Errorf("zero segment %s from %d: %w", name, valid, err)
		}
	} else if err := f.Truncate(int64(valid)); err != nil {
		f.Close()
		return fmt.Errorf("truncate segment %s to %d: %w", name, valid, err)
	}
	// Bytes written before a crash may not have reached disk yet.
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync segment %s: %w", name, err)
	}
	seg := &segment{key: segKey{tli, no}, f: f, path: path, size: int64(valid), flushed: int64(valid), filled: filled}
	seg.durable.Store(int64(valid))
	s.segs[seg.key] = seg
	if uint64(valid) == s.meta.SegmentSize {
		return s.completeSegment(seg, true)
	}
	if !newest {
		// The last segment of a timeline that was switched away from.
		return nil
	}
	seg.buf = s.takeMemBuf(seg.key)
	seg.mem = seg.buf.b
	copy(seg.mem, data[:valid])
	s.memSegs = append(s.memSegs, seg)
	return nil
}

// recoveredSegment is the complete segment no held for timeline tli (the
// newest timeline at or before tli that holds it), or nil: during recovery
// it lets the record a partial segment begins inside of be validated whole.
func (s *Store) recoveredSegment(tli TimeLineID, no uint64) ([]byte, error) {
	var seg *segment
	for _, sg := range s.segs {
		if sg.key.no == no && sg.complete && sg.key.tli <= tli && (seg == nil || sg.key.tli > seg.key.tli) {
			seg = sg
		}
	}
	if seg == nil || no == ^uint64(0) {
		return nil, nil
	}
	b := make([]byte, s.meta.SegmentSize)
	for off := 0; off < len(b); {
		n, err := s.readAt(seg.key.tli, LSN(no*s.meta.SegmentSize)+LSN(off), b[off:], -1)
		if err != nil {
			return nil, fmt.Errorf("read segment %s to validate the one after it: %w", seg.path, err)
		}
		off += n
	}
	return b, nil
}

// validPrefix returns how many leading bytes of a segment's data have intact
// page headers: the data is cut at the first page whose header is missing,
// incomplete or does not name its own position.
func (s *Store) validPrefix(data []byte, segStart LSN) int {
	s.mu.Lock()
	id := s.meta.Identity
	s.mu.Unlock()
	return validPrefix(data, segStart, id, s.log)
}

func validPrefix(data []byte, segStart LSN, id Identity, log *slog.Logger) int {
	var magic uint16
	for off := 0; off < len(data); off += PageSize {
		end := min(off+PageSize, len(data))
		if err := checkPage(data[off:end], segStart+LSN(off), magic, id); err != nil {
			log.Debug("invalid WAL page", "err", err)
			return off
		}
		if off == 0 {
			h, _ := parsePageHeader(data)
			magic = h.Magic
		}
	}
	return len(data)
}

// Identity returns the store's identity and whether it has one yet.
func (s *Store) Identity() (Identity, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meta.Identity, s.hasMeta
}

// ServerVersion returns the upstream server_version last recorded.
func (s *Store) ServerVersion() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meta.ServerVersion
}

// Bind records the upstream's identity on first use and checks it on every
// later one, returning an *IdentityMismatchError when they differ.
func (s *Store) Bind(id Identity, serverVersion string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hasMeta && (s.meta.Identity != id || differentMajors(s.meta.ServerVersion, serverVersion)) {
		return &IdentityMismatchError{Store: s.meta.Identity, Upstream: id, StoreVersion: s.meta.ServerVersion, UpstreamVersion: serverVersion}
	}
	if !ValidSegmentSize(id.SegmentSize) {
		return fmt.Errorf("invalid WAL segment size %d", id.SegmentSize)
	}
	if s.hasMeta && s.meta.ServerVersion == serverVersion {
		return nil
	}
	meta := metaFile{Identity: id, ServerVersion: serverVersion}
	b, err := json.MarshalIndent(meta, "", "  ")
	if err != nil {
		return err
	}
	if err := vfs.WriteFileAtomic(s.fs, filepath.Join(s.dir, identityFile), b); err != nil {
		return fmt.Errorf("write store identity: %w", err)
	}
	s.meta, s.hasMeta = meta, true
	return nil
}

// Close closes every file. Readers still running get errors.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var first error
	for _, seg := range s.segs {
		if seg == s.writer {
			// Cut the zero fill off, so that reopening finds the exact end
			// by the file's size (see openPartial).
			err := s.flush(seg)
			if err == nil {
				err = seg.f.Truncate(seg.size)
			}
			if err == nil {
				err = seg.f.Sync()
			}
			if err != nil && first == nil {
				first = fmt.Errorf("sync %s: %w", seg.path, err)
			}
		}
		seg.f.Close()
	}
	s.notify.broadcast()
	s.spareWG.Wait()
	return first
}

// notifier wakes every waiter at once without blocking the one who
// broadcasts: waiters take the current channel, which is closed and replaced
// on each broadcast.
type notifier struct {
	mu sync.Mutex
	ch chan struct{}
}

func (n *notifier) init() { n.ch = make(chan struct{}) }

func (n *notifier) wait() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

func (n *notifier) broadcast() {
	n.mu.Lock()
	close(n.ch)
	n.ch = make(chan struct{})
	n.mu.Unlock()
}

// differentMajors reports two known server versions of different majors.
func differentMajors(a, b string) bool {
	return MajorVersion(a) != 0 && MajorVersion(b) != 0 && MajorVersion(a) != MajorVersion(b)
}

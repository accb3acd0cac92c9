package relay

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/walrelay/walrelay/internal/vfs"
	"github.com/walrelay/walrelay/walstream"
)

// Relay-local physical replication slots. A persistent slot is one JSON
// file, <dir>/<name>.json, written atomically; temporary slots live only in
// memory and vanish with their session. A slot pins WAL from its restart_lsn.

// SlotStatus describes a slot for /status.
type SlotStatus struct {
	// Invalidated: the WAL it needed was removed (--max-retained-size);
	// it can no longer be streamed from.
	Invalidated bool `json:"invalidated,omitempty"`
	// Upstream: a client created it through the relay, so the same-named
	// slot exists on the nearest PostgreSQL ancestor too (--mirror-slots).
	Upstream   bool                 `json:"upstream,omitempty"`
	Name       string               `json:"name"`
	Temporary  bool                 `json:"temporary"`
	Active     bool                 `json:"active"`
	ActivePID  int32                `json:"active_pid,omitempty"`
	RestartLSN walstream.LSN        `json:"restart_lsn"`
	RestartTLI walstream.TimeLineID `json:"restart_tli"`
}

type slot struct {
	SlotStatus
	dirty     bool
	persisted time.Time
}

type slotStore struct {
	fs  vfs.FS
	dir string
	log *slog.Logger

	mu    sync.Mutex
	slots map[string]*slot
}

type slotFile struct {
	Name        string               `json:"name"`
	Invalidated bool                 `json:"invalidated,omitempty"`
	Upstream    bool                 `json:"upstream,omitempty"`
	RestartLSN  walstream.LSN        `json:"restart_lsn"`
	RestartTLI  walstream.TimeLineID `json:"restart_tli"`
}

func openSlotStore(fsys vfs.FS, dir string, log *slog.Logger) (*slotStore, error) {
	if err := fsys.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create slot directory: %w", err)
	}
	if err := fsys.SyncDir(filepath.Dir(dir)); err != nil {
		return nil, fmt.Errorf("sync %s: %w", filepath.Dir(dir), err)
	}
	ss := &slotStore{fs: fsys, dir: dir, log: log, slots: make(map[string]*slot)}
	entries, err := fsys.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read slot directory: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			fsys.Remove(filepath.Join(dir, name))
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := fsys.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("read slot %s: %w", name, err)
		}
		var f slotFile
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("parse slot %s: %w", name, err)
		}
		ss.slots[f.Name] = &slot{SlotStatus: SlotStatus{Name: f.Name, RestartLSN: f.RestartLSN, RestartTLI: f.RestartTLI, Invalidated: f.Invalidated, Upstream: f.Upstream}}
	}
	return ss, nil
}

// checkSlotName applies PostgreSQL's rule (ReplicationSlotValidateName).
func checkSlotName(name string) error {
	if name == "" {
		return errorf("42602", "replication slot name \"%s\" is too short", name)
	}
	if len(name) >= 64 {
		return errorf("42602", "replication slot name \"%s\" is too long", name)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			pe := errorf("42602", "replication slot name \"%s\" contains invalid character", name)
			pe.Hint = "Replication slot names may only contain lower case letters, numbers, and the underscore character."
			return pe
		}
	}
	return nil
}

func (ss *slotStore) create(name string, temporary bool, restart walstream.LSN, tli walstream.TimeLineID, upstream bool) error {
	if err := checkSlotName(name); err != nil {
		return err
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if _, ok := ss.slots[name]; ok {
		return errorf("42710", "replication slot \"%s\" already exists", name)
	}
	sl := &slot{SlotStatus: SlotStatus{Name: name, Temporary: temporary, RestartLSN: restart, RestartTLI: tli, Upstream: upstream}}
	if !temporary {
		if err := ss.persist(sl); err != nil {
			return err
		}
	}
	ss.slots[name] = sl
	return nil
}

func (ss *slotStore) get(name string) (SlotStatus, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sl, ok := ss.slots[name]
	if !ok {
		return SlotStatus{}, false
	}
	return sl.SlotStatus, true
}

func (ss *slotStore) acquire(name string, pid int32) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sl, ok := ss.slots[name]
	if !ok {
		return errorf("42704", "replication slot \"%s\" does not exist", name)
	}
	if sl.Active && sl.ActivePID != pid {
		return errorf("55006", "replication slot \"%s\" is active for PID %d", name, sl.ActivePID)
	}
	if sl.Invalidated {
		pe := errorf("55000", "can no longer get changes from replication slot \"%s\"", name)
		pe.Detail = "This slot has been invalidated because it exceeded the maximum reserved size (--max-retained-size)."
		return pe
	}
	sl.Active, sl.ActivePID = true, pid
	return nil
}

func (ss *slotStore) release(name string, pid int32) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if sl, ok := ss.slots[name]; ok && sl.ActivePID == pid {
		sl.Active, sl.ActivePID = false, 0
		if sl.dirty && !sl.Temporary {
			if err := ss.persist(sl); err != nil {
				ss.log.Warn("persist slot", "slot", name, "err", err)
			}
		}
	}
}

func (ss *slotStore) drop(name string) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sl, ok := ss.slots[name]
	if !ok {
		return errorf("42704", "replication slot \"%s\" does not exist", name)
	}
	if sl.Active {
		return errorf("55006", "replication slot \"%s\" is active for PID %d", name, sl.ActivePID)
	}
	if !sl.Temporary {
		path := filepath.Join(ss.dir, name+".json")
		if err := ss.fs.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("drop slot %s: %w", name, err)
		}
		// A dropped slot that came back after a crash would hold WAL.
		if err := ss.fs.SyncDir(ss.dir); err != nil {
			return fmt.Errorf("drop slot %s: %w", name, err)
		}
	}
	delete(ss.slots, name)
	return nil
}

// advance moves a slot's restart_lsn to what its client has flushed. The
// file is rewritten at most once a second; a crash can only leave it
// behind, which keeps more WAL, never less.
func (ss *slotStore) advance(name string, flush walstream.LSN) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sl, ok := ss.slots[name]
	if !ok || sl.Invalidated || flush <= sl.RestartLSN {
		return
	}
	sl.RestartLSN = flush
	sl.dirty = true
	if !sl.Temporary && time.Since(sl.persisted) > time.Second {
		if err := ss.persist(sl); err != nil {
			ss.log.Warn("persist slot", "slot", name, "err", err)
		}
	}
}

// invalidate releases a slot's hold on WAL for good.
func (ss *slotStore) invalidate(name string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	sl, ok := ss.slots[name]
	if !ok || sl.Invalidated {
		return
	}
	sl.Invalidated, sl.RestartLSN = true, walstream.InvalidLSN
	if !sl.Temporary {
		if err := ss.persist(sl); err != nil {
			ss.log.Warn("persist slot", "slot", name, "err", err)
		}
	}
}

// persist writes sl; called with ss.mu held.
func (ss *slotStore) persist(sl *slot) error {
	b, err := json.Marshal(slotFile{Name: sl.Name, RestartLSN: sl.RestartLSN, RestartTLI: sl.RestartTLI, Invalidated: sl.Invalidated, Upstream: sl.Upstream})
	if err != nil {
		return err
	}
	if err := vfs.WriteFileAtomic(ss.fs, filepath.Join(ss.dir, sl.Name+".json"), b); err != nil {
		return fmt.Errorf("persist slot %s: %w", sl.Name, err)
	}
	sl.dirty, sl.persisted = false, time.Now()
	return nil
}

// flush persists every slot with unsaved progress.
func (ss *slotStore) flush() error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var first error
	for _, sl := range ss.slots {
		if sl.dirty && !sl.Temporary {
			if err := ss.persist(sl); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

func (ss *slotStore) list() []SlotStatus {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]SlotStatus, 0, len(ss.slots))
	for _, sl := range ss.slots {
		out = append(out, sl.SlotStatus)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// oldest is the smallest restart_lsn of slots that reserve WAL.
func (ss *slotStore) oldest() (walstream.LSN, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var min walstream.LSN
	found := false
	for _, sl := range ss.slots {
		if sl.RestartLSN != walstream.InvalidLSN && (!found || sl.RestartLSN < min) {
			min, found = sl.RestartLSN, true
		}
	}
	return min, found
}

// EnsureSlot makes sure a persistent slot named name exists and holds WAL
// from restart on: it creates the slot there when missing and otherwise only
// moves it forward. The managers call it (through the relay's agent) on every
// relay that may become a standby's parent, so the standby finds its slot,
// holding what it still needs, wherever it is moved.
func (s *Server) EnsureSlot(name string, restart walstream.LSN) (created bool, err error) {
	if err := checkSlotName(name); err != nil {
		return false, err
	}
	tli, _ := s.cfg.Source.DurableEnd()
	ss := s.slots
	ss.mu.Lock()
	sl, ok := ss.slots[name]
	ss.mu.Unlock()
	if !ok {
		if err := ss.create(name, false, restart, tli, false); err != nil {
			var pe *PGError
			if errors.As(err, &pe) && pe.Code == "42710" {
				return false, nil // created meanwhile by a client
			}
			return false, err
		}
		s.log.Info("created replication slot for a managed standby", "slot", name, "restart_lsn", restart)
		return true, nil
	}
	if sl.Temporary {
		return false, fmt.Errorf("slot %s is a temporary slot of a client", name)
	}
	ss.advance(name, restart)
	return false, nil
}

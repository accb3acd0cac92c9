package relay

import (
	"context"
	"strings"
	"time"

	"github.com/walrelay/walrelay/internal/units"
	"github.com/walrelay/walrelay/walstream"
)

// RetentionPolicy says how much WAL a relay keeps. WAL that relay-local
// slots and connected children still need is kept, up to MaxRetainedSize;
// beyond that the slots holding it are invalidated, loudly, as PostgreSQL's
// max_slot_wal_keep_size does. Otherwise WAL is kept for RetainSize bytes
// behind the durable end or RetainAge, whichever keeps more.
type RetentionPolicy struct {
	RetainSize      uint64
	RetainAge       time.Duration
	MaxRetainedSize uint64 // 0: no cap
}

// ParseRetain parses --retain: a size (512MB, 2GB) or an age (24h, 90m).
func ParseRetain(s string) (size uint64, age time.Duration, err error) {
	s = strings.TrimSpace(s)
	if d, err := time.ParseDuration(s); err == nil && s != "0" {
		return 0, d, nil
	}
	size, err = ParseSize(s)
	return size, 0, err
}

// ParseSize parses sizes like 512MB, 1GB, 1048576.
func ParseSize(s string) (uint64, error) { return units.ParseSize(s) }

// retentionPlan is what one retention pass decides.
type retentionPlan struct {
	keepFrom   walstream.LSN // remove complete segments that end at or before this
	invalidate []string      // slots whose WAL goes beyond the cap
}

// planRetention is the pure policy: segments held, the durable end, what
// slots and streaming children need, and now.
func planRetention(p RetentionPolicy, segs []walstream.SegmentInfo, end walstream.LSN, slots []SlotStatus, needed walstream.LSN, haveNeeded bool, now time.Time) retentionPlan {
	var plan retentionPlan
	keep := walstream.LSN(0)
	if uint64(end) > p.RetainSize {
		keep = end - walstream.LSN(p.RetainSize)
	}
	if p.RetainAge > 0 {
		for _, s := range segs {
			if now.Sub(s.ModTime) < p.RetainAge && s.Start < keep {
				keep = s.Start
				break
			}
		}
	}
	if haveNeeded && needed < keep {
		keep = needed
	}
	if p.MaxRetainedSize > 0 && uint64(end) > p.MaxRetainedSize {
		floor := end - walstream.LSN(p.MaxRetainedSize)
		if keep < floor {
			keep = floor
			for _, sl := range slots {
				if sl.RestartLSN != walstream.InvalidLSN && sl.RestartLSN < floor {
					plan.invalidate = append(plan.invalidate, sl.Name)
				}
			}
		}
	}
	plan.keepFrom = keep
	return plan
}

// RunRetention applies the policy to store every interval until ctx ends.
// policy is read at every pass, so it can change live (SIGHUP).
func (s *Server) RunRetention(ctx context.Context, store *walstream.Store, policy func() RetentionPolicy, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		s.applyRetention(store, policy(), time.Now())
	}
}

func (s *Server) applyRetention(store *walstream.Store, p RetentionPolicy, now time.Time) {
	_, end := store.DurableEnd()
	needed, have := s.OldestNeeded()
	segs := store.SegmentInfos()
	plan := planRetention(p, segs, end, s.slots.list(), needed, have, now)
	for _, name := range plan.invalidate {
		s.log.Error("invalidating replication slot: the WAL it needs exceeds --max-retained-size",
			"slot", name, "max_retained_size", p.MaxRetainedSize, "keep_from", plan.keepFrom.String())
		s.slots.invalidate(name)
		s.m.slotsInvalidated.Inc()
	}
	n, err := store.RemoveBefore(plan.keepFrom)
	if err != nil {
		s.log.Error("removing old WAL", "err", err)
	} else if n > 0 {
		s.log.Info("removed old WAL segments", "count", n, "keep_from", plan.keepFrom.String())
	}
	// What is left is what RemoveBefore kept of the same list.
	var held int64
	segSize := walstream.LSN(0)
	if id, ok := s.cfg.Source.Identity(); ok {
		segSize = walstream.LSN(id.SegmentSize)
	}
	for _, seg := range segs {
		if err == nil && seg.Complete && seg.Start+segSize <= plan.keepFrom {
			continue
		}
		held += seg.Bytes
	}
	s.m.storeBytes.Set(float64(held))
}

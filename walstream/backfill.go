package walstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Backfiller fetches WAL older than the store holds from the parent
// (read-through): a child asking for it is served instead of being told the
// WAL is gone, as long as some ancestor still has it. A parent that is a
// relay backfills in turn.
type Backfiller struct {
	// ConnString returns the parent's current connection string.
	ConnString func() string
	NodeID     string
	Store      *Store
	Logger     *slog.Logger

	mu sync.Mutex // one backfill at a time; later requests find the work done
}

// Fetch makes the store hold timeline tli from the segment of from up to
// its oldest segment. An error matching ErrWALRemoved means no ancestor has
// the WAL; a *pgconn.PgError carries the parent's own error.
func (b *Backfiller) Fetch(ctx context.Context, tli TimeLineID, from LSN) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	id, ok := b.Store.Identity()
	if !ok {
		return errors.New("backfill: store has no identity yet")
	}
	from = from.SegmentStart(id.SegmentSize)
	to, ok := b.Store.OldestLSN(tli)
	if !ok {
		_, to = b.Store.DurableEnd()
		to = to.SegmentStart(id.SegmentSize)
	}
	if from >= to {
		return nil
	}
	log := b.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log.Info("backfilling WAL from upstream", "timeline", tli, "from_lsn", from.String(), "to_lsn", to.String())
	t0 := time.Now()
	if err := b.fetch(ctx, id, tli, from, to, b.Store.InstallSegment); err != nil {
		return err
	}
	log.Info("backfill done", "timeline", tli, "from_lsn", from.String(), "to_lsn", to.String(), "duration", time.Since(t0))
	return nil
}

// Refetch fetches one held segment again from the parent and replaces the
// store's copy, after corruption was detected in it.
func (b *Backfiller) Refetch(ctx context.Context, tli TimeLineID, segNo uint64) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	id, ok := b.Store.Identity()
	if !ok {
		return errors.New("refetch: store has no identity yet")
	}
	from := LSN(segNo * id.SegmentSize)
	return b.fetch(ctx, id, tli, from, from+LSN(id.SegmentSize), b.Store.ReplaceSegment)
}

func (b *Backfiller) fetch(ctx context.Context, id Identity, tli TimeLineID, from, to LSN, install func(TimeLineID, uint64, []byte) error) error {
	cs := b.ConnString()
	if cs == "" {
		return errors.New("backfill: no parent assigned yet")
	}
	conn, err := connectReplication(ctx, cs, b.NodeID+"_backfill", nil)
	if err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	defer conn.Close(context.Background())
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return fmt.Errorf("backfill: IDENTIFY_SYSTEM: %w", err)
	}
	if sys.SystemID != fmt.Sprint(id.SystemID) {
		return fmt.Errorf("backfill: upstream has system identifier %s, the store %d", sys.SystemID, id.SystemID)
	}
	cc, release, err := hijackCopy(ctx, conn)
	if err != nil {
		return err
	}
	defer release()
	if err := cc.startCopy(ctx, fmt.Sprintf("START_REPLICATION PHYSICAL %s TIMELINE %d", from, tli)); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "58P01" {
			return &WALRemovedError{Segment: SegmentFileName(tli, from.SegmentNo(id.SegmentSize), id.SegmentSize)}
		}
		return fmt.Errorf("backfill: START_REPLICATION %s: %w", from, err)
	}
	seg := make([]byte, id.SegmentSize)
	pos := from
	for pos < to {
		typ, body, err := cc.next(time.Now().Add(60 * time.Second))
		if err != nil {
			return fmt.Errorf("backfill at %s: %w", pos, err)
		}
		switch typ {
		case 'd':
		case 'E':
			var er pgproto3.ErrorResponse
			if err := er.Decode(body); err != nil {
				return err
			}
			if er.Code == "58P01" {
				return &WALRemovedError{Segment: SegmentFileName(tli, pos.SegmentNo(id.SegmentSize), id.SegmentSize)}
			}
			return fmt.Errorf("backfill at %s: %w", pos, pgconn.ErrorResponseToPgError(&er))
		default:
			return fmt.Errorf("backfill at %s: unexpected message %q", pos, typ)
		}
		if len(body) == 0 || body[0] != MsgXLogData {
			continue // keepalives: this connection reports nothing
		}
		x, err := ParseXLogData(body)
		if err != nil {
			return err
		}
		if x.DataStart != pos {
			return fmt.Errorf("backfill: got WAL at %s, want %s", x.DataStart, pos)
		}
		for data := x.Data; len(data) > 0 && pos < to; {
			off := pos.SegmentOffset(id.SegmentSize)
			n := copy(seg[off:], data)
			data, pos = data[n:], pos+LSN(n)
			if pos.SegmentOffset(id.SegmentSize) == 0 {
				if err := install(tli, pos.SegmentNo(id.SegmentSize)-1, seg); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

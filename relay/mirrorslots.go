package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/walstream"
)

// Mirrored slots (Config.MirrorSlots). A slot a client creates through the
// relay is created on the nearest PostgreSQL ancestor as well (a parent that
// is a relay does the same), and while the client streams with it the relay
// holds the ancestor's slot active and moves it to the client's flush
// position. Tools that look at their slot with SQL on the primary, such as
// Barman (`barman check`: the slot exists, is initialised and active;
// `barman receive-wal`: it exists and is not active yet), then see what they
// would see without the relay. The WAL itself is still served from the
// relay's store; the holder reads and drops what the ancestor sends, so such
// a client costs the ancestor one more stream, as it would without the
// relay.

// ancestorExec runs one simple command on the session's connection to its
// parent and returns the parent's error, if it answered with one.
func (s *session) ancestorExec(what, query string) (*PGError, error) {
	up, err := s.ancestorConn(what)
	if err != nil {
		return nil, err
	}
	up.fe.Send(&pgproto3.Query{String: query})
	if err := up.fe.Flush(); err != nil {
		s.closeAncestor()
		return nil, errorf("08006", "%s: connection to the upstream lost: %v", what, err)
	}
	var answer *PGError
	for {
		up.conn.SetReadDeadline(time.Now().Add(s.srv.cfg.SenderTimeout))
		msg, err := up.fe.Receive()
		if err != nil {
			s.closeAncestor()
			return nil, errorf("08006", "%s: connection to the upstream lost: %v", what, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			answer = &PGError{Severity: "ERROR", Code: m.Code, Message: m.Message, Detail: m.Detail, Hint: m.Hint}
		case *pgproto3.ReadyForQuery:
			return answer, nil
		}
	}
}

// createUpstreamSlot creates the mirror of a new slot on the parent. A slot
// of that name already there is taken over (a relay rebuilt with an empty
// data directory finds the slots its clients made before).
func (s *session) createUpstreamSlot(name string, reserveWAL bool) error {
	q := fmt.Sprintf(`CREATE_REPLICATION_SLOT "%s" PHYSICAL`, name)
	if reserveWAL {
		q += " RESERVE_WAL"
	}
	pe, err := s.ancestorExec("CREATE_REPLICATION_SLOT", q)
	switch {
	case err != nil:
		return err
	case pe == nil:
		s.log.Info("replication slot created on the upstream too", "slot", name)
	case pe.Code == "42710":
		s.log.Info("replication slot already on the upstream: taken over", "slot", name)
	default:
		pe.Message = "on the upstream: " + pe.Message
		return pe
	}
	return nil
}

// dropUpstreamSlot drops the mirror of a dropped slot, waiting for the
// ancestor to release it; one already gone is fine.
func (s *session) dropUpstreamSlot(name string) {
	pe, err := s.ancestorExec("DROP_REPLICATION_SLOT", fmt.Sprintf(`DROP_REPLICATION_SLOT "%s" WAIT`, name))
	switch {
	case err != nil:
		s.log.Warn("could not drop the slot's mirror on the upstream; drop it there", "slot", name, "err", err)
	case pe != nil && pe.Code != "42704":
		s.log.Warn("could not drop the slot's mirror on the upstream; drop it there", "slot", name, "err", pe.Message)
	default:
		s.log.Info("replication slot dropped on the upstream too", "slot", name)
	}
}

// holdUpstreamSlot keeps the parent's mirror of slot active until ctx ends,
// reporting the relay-local slot's position (what the client has flushed)
// as its flush position, so the parent keeps the WAL the client still
// needs and shows the slot as a walsender holding it would. It reconnects
// after a failure or the end of a timeline.
func (s *session) holdUpstreamSlot(ctx context.Context, slot, app string) {
	var last string
	for ctx.Err() == nil {
		err := s.holdOnce(ctx, slot, app)
		if ctx.Err() != nil {
			return
		}
		// Said once per new reason, not every second.
		if msg := fmt.Sprint(err); msg != last {
			last = msg
			s.log.Warn("holding the slot's mirror on the upstream: stream ended; retrying every second", "slot", slot, "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *session) holdOnce(ctx context.Context, slot, app string) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := dialReplication(cctx, s.upstreamConnString(), app)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// Closing the connection is what ends the stream when ctx ends.
	stop := context.AfterFunc(ctx, func() { conn.Close(context.Background()) })
	defer stop()
	res, err := conn.Exec(cctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		return err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) < 3 {
		return errors.New("IDENTIFY_SYSTEM: unexpected answer")
	}
	tli, xlogpos := string(res[0].Rows[0][1]), string(res[0].Rows[0][2])
	hc, err := conn.Hijack()
	if err != nil {
		return err
	}
	nc := hc.Conn
	defer nc.Close()
	stopNC := context.AfterFunc(ctx, func() { nc.Close() })
	defer stopNC()
	start, err := (&pgproto3.Query{String: fmt.Sprintf(`START_REPLICATION SLOT "%s" PHYSICAL %s TIMELINE %s`, slot, xlogpos, tli)}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := nc.Write(start); err != nil {
		return err
	}
	// The reader drops what arrives and asks for a reply when the upstream
	// wants one; the writer reports the slot's position at once and every
	// second, so its restart_lsn is set as soon as the stream starts.
	kick := make(chan struct{}, 1)
	readErr := make(chan error, 1)
	go func() {
		for {
			msg, err := hc.Frontend.Receive()
			if err != nil {
				readErr <- err
				return
			}
			switch m := msg.(type) {
			case *pgproto3.ErrorResponse:
				readErr <- fmt.Errorf("START_REPLICATION SLOT %s: %s (SQLSTATE %s)", slot, m.Message, m.Code)
				return
			case *pgproto3.CopyDone, *pgproto3.CommandComplete:
				readErr <- errors.New("the upstream ended the stream")
				return
			case *pgproto3.CopyData:
				if k, err := walstream.ParseKeepalive(m.Data); err == nil && k.ReplyRequested {
					select {
					case kick <- struct{}{}:
					default:
					}
				}
			}
		}
	}()
	var buf []byte
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		pos := walstream.InvalidLSN
		if sl, ok := s.srv.slots.get(slot); ok {
			pos = sl.RestartLSN
		}
		buf = walstream.AppendStandbyStatus(buf[:0], walstream.StandbyStatus{Write: pos, Flush: pos, Apply: pos, SendTime: walstream.PGTime(time.Now())})
		msg, err := (&pgproto3.CopyData{Data: buf}).Encode(nil)
		if err != nil {
			return err
		}
		nc.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := nc.Write(msg); err != nil {
			return err
		}
		select {
		case err := <-readErr:
			return err
		case <-kick:
		case <-tick.C:
		}
	}
}

package relay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/walstream"
)

// SessionStatus describes one downstream client, for /status.
type SessionStatus struct {
	PID             int32  `json:"pid"`
	ApplicationName string `json:"application_name"`
	User            string `json:"user"`
	Address         string `json:"address"`
	SSL             bool   `json:"ssl"`
	State           string `json:"state"` // startup, idle, streaming
	// Relay is true for a child that is another walrelay relay.
	Relay     bool                 `json:"relay,omitempty"`
	Slot      string               `json:"slot,omitempty"`
	Timeline  walstream.TimeLineID `json:"timeline,omitempty"`
	SentLSN   walstream.LSN        `json:"sent_lsn"`
	WriteLSN  walstream.LSN        `json:"write_lsn"`
	FlushLSN  walstream.LSN        `json:"flush_lsn"`
	ReplayLSN walstream.LSN        `json:"replay_lsn"`
	// LagBytes is how far the client's flush (or write, for clients that
	// report no flush) is behind the relay's durable end.
	LagBytes         uint64    `json:"lag_bytes"`
	WriteLagSeconds  float64   `json:"write_lag_seconds"`
	FlushLagSeconds  float64   `json:"flush_lag_seconds"`
	ReplayLagSeconds float64   `json:"replay_lag_seconds"`
	Xmin             uint32    `json:"xmin,omitempty"`
	XminEpoch        uint32    `json:"xmin_epoch,omitempty"`
	CatalogXmin      uint32    `json:"catalog_xmin,omitempty"`
	CatalogXminEpoch uint32    `json:"catalog_xmin_epoch,omitempty"`
	ConnectedAt      time.Time `json:"connected_at"`
	LastReplyAt      time.Time `json:"last_reply_at,omitzero"`
	// Compression is "zstd" on a compressed link. SentBytes counts WAL
	// sent, SentWireBytes what it took on the wire with protocol framing.
	Compression   string `json:"compression,omitempty"`
	SentBytes     uint64 `json:"sent_bytes"`
	SentWireBytes uint64 `json:"sent_wire_bytes"`
	pinFrom       walstream.LSN
}

// errCopyDone reports that the client ended COPY mode.
var errCopyDone = errors.New("client sent CopyDone")

// startReplication runs START_REPLICATION ... PHYSICAL: checks done before
// CopyBothResponse fail as plain errors, those after it end COPY with an
// ErrorResponse, as in walsender.c.
func (s *session) startReplication(cmd Command) error {
	src := s.srv.cfg.Source
	tli, durable := src.DurableEnd()
	id, _ := src.Identity()
	if cmd.Slot != "" {
		if err := s.srv.slots.acquire(cmd.Slot, s.pid); err != nil {
			return err
		}
		defer s.srv.slots.release(cmd.Slot, s.pid)
		if sl, _ := s.srv.slots.get(cmd.Slot); sl.Upstream && s.srv.cfg.MirrorSlots && s.upstreamConnString() != "" {
			s.mu.Lock()
			app := s.info.ApplicationName
			s.mu.Unlock()
			hctx, stopHolding := context.WithCancel(context.Background())
			held := make(chan struct{})
			go func() {
				defer close(held)
				s.holdUpstreamSlot(hctx, cmd.Slot, app)
			}()
			// The mirror is released before the local slot is.
			defer func() { stopHolding(); <-held }()
		}
	}
	reqTLI := cmd.Timeline
	if reqTLI == 0 {
		reqTLI = tli
	}
	start := cmd.StartLSN
	if reqTLI != tli {
		return s.startHistoric(cmd, reqTLI, tli)
	}
	s.be.Send(&pgproto3.CopyBothResponse{OverallFormat: 0})
	if err := s.be.Flush(); err != nil {
		return err
	}
	if start > durable {
		upstreamEnd, ok := s.upstreamReaches(start)
		if !ok {
			_, durable = src.DurableEnd()
			return s.copyError(errorf("XX000", "requested starting point %s is ahead of the WAL flush position of this server %s", start, durable))
		}
		// The WAL exists upstream and is on its way: hold the stream open
		// instead of making the client retry every few seconds.
		s.log.Info("client asked for WAL the relay has not received yet; waiting for it",
			"start_lsn", start.String(), "durable_lsn", durable.String(), "upstream_lsn", upstreamEnd.String())
	}
	heldFrom := durable.SegmentStart(id.SegmentSize)
	if oldest, ok := src.OldestLSN(tli); ok {
		heldFrom = oldest
	}
	if start < heldFrom {
		seg := walstream.SegmentFileName(tli, start.SegmentNo(id.SegmentSize), id.SegmentSize)
		removed := errorf("58P01", "requested WAL segment %s has already been removed", seg)
		if s.srv.cfg.Backfill == nil {
			return s.copyError(removed)
		}
		if err := s.backfill(tli, start, heldFrom); err != nil {
			s.log.Warn("backfill failed", "start_lsn", start.String(), "err", err)
			removed.Detail = fmt.Sprintf("The relay could not fetch it from its upstream: %v", err)
			return s.copyError(removed)
		}
	}
	return s.stream(tli, start, cmd.Slot)
}

// timelineEnd returns where timeline tli ended according to the history
// of the current timeline cur, and the timeline that followed it.
func (s *session) timelineEnd(tli, cur walstream.TimeLineID) (walstream.LSN, walstream.TimeLineID, error) {
	content, ok := s.srv.cfg.Source.History(cur)
	if !ok {
		return 0, 0, errorf("XX000", "requested timeline %d is not in this server's history", tli)
	}
	hist, err := walstream.ParseHistory(content)
	if err != nil {
		return 0, 0, fmt.Errorf("history of timeline %d: %w", cur, err)
	}
	next, at, ok := walstream.NextTimeline(hist, cur, tli)
	if !ok {
		return 0, 0, errorf("XX000", "requested timeline %d is not in this server's history", tli)
	}
	return at, next, nil
}

// startHistoric serves START_REPLICATION on a timeline that is no longer
// the relay's: WAL up to its switch point, then the end-of-timeline result.
func (s *session) startHistoric(cmd Command, reqTLI, cur walstream.TimeLineID) error {
	if reqTLI > cur {
		return errorf("XX000", "requested timeline %d is not in this server's history", reqTLI)
	}
	switchPoint, next, err := s.timelineEnd(reqTLI, cur)
	if err != nil {
		return err
	}
	if cmd.StartLSN > switchPoint {
		pe := errorf("XX000", "requested starting point %s on timeline %d is not in this server's history", cmd.StartLSN, reqTLI)
		pe.Detail = fmt.Sprintf("This server's history forked from timeline %d at %s.", reqTLI, switchPoint)
		return pe
	}
	if cmd.StartLSN == switchPoint {
		// Nothing to stream: straight to the end-of-timeline result.
		return s.sendTimelineEnd(next, switchPoint)
	}
	s.be.Send(&pgproto3.CopyBothResponse{OverallFormat: 0})
	if err := s.be.Flush(); err != nil {
		return err
	}
	return s.stream(reqTLI, cmd.StartLSN, cmd.Slot)
}

// sendTimelineEnd sends the result set a walsender sends after streaming a
// historic timeline: the next timeline and where it starts.
func (s *session) sendTimelineEnd(next walstream.TimeLineID, at walstream.LSN) error {
	s.log.Info("timeline ended for client", "next_timeline", next, "switch_lsn", at.String())
	s.be.Send(&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("next_tli"), DataTypeOID: oidInt8, DataTypeSize: 8, TypeModifier: -1},
		{Name: []byte("next_tli_startpos"), DataTypeOID: oidText, DataTypeSize: -1, TypeModifier: -1},
	}})
	s.be.Send(&pgproto3.DataRow{Values: [][]byte{[]byte(strconv.FormatUint(uint64(next), 10)), []byte(at.String())}})
	s.be.Send(&pgproto3.CommandComplete{CommandTag: []byte("START_STREAMING")})
	s.be.Send(&pgproto3.CommandComplete{CommandTag: []byte("START_REPLICATION")})
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return s.be.Flush()
}

// streamEnd is how far a stream on tli may go: the durable end while tli is
// current, its switch point once it is historic.
func (s *session) streamEnd(tli walstream.TimeLineID) (end walstream.LSN, next walstream.TimeLineID, historic bool, err error) {
	cur, durable := s.srv.cfg.Source.DurableEnd()
	if cur == tli {
		return durable, 0, false, nil
	}
	at, next, err := s.timelineEnd(tli, cur)
	return at, next, true, err
}

// endTimeline finishes a stream whose timeline became historic: CopyDone,
// wait for the client's CopyDone, then the end-of-timeline result set.
func (s *session) endTimeline(st *streamState, next walstream.TimeLineID, at walstream.LSN) (closeConn bool, err error) {
	s.be.Send(&pgproto3.CopyDone{})
	if err := s.be.Flush(); err != nil {
		return true, err
	}
	select {
	case err := <-st.recvDone:
		if !errors.Is(err, errCopyDone) {
			return true, err
		}
	case <-time.After(s.srv.cfg.SenderTimeout):
		return true, errors.New("client did not end COPY after the end of its timeline")
	}
	return false, s.sendTimelineEnd(next, at)
}

// aheadGrace is how long a request ahead of both the relay and its parent's
// last report may wait for them to catch up before it is refused. Positions
// travel down a chain of relays in milliseconds; a client that learnt a
// position from the primary (pg_basebackup's start point) can be quicker.
const aheadGrace = 3 * time.Second

// upstreamReaches reports whether WAL up to start exists upstream (or has
// arrived here), waiting up to aheadGrace for the news.
func (s *session) upstreamReaches(start walstream.LSN) (walstream.LSN, bool) {
	src := s.srv.cfg.Source
	deadline := time.Now().Add(aheadGrace)
	for {
		wake := src.Wait()
		var upstreamEnd walstream.LSN
		if up := s.srv.cfg.Upstream; up != nil {
			upstreamEnd = up.ServerWALEnd()
		}
		_, durable := src.DurableEnd()
		if start <= upstreamEnd || start <= durable {
			return upstreamEnd, true
		}
		if s.srv.cfg.Upstream == nil || time.Now().After(deadline) {
			return upstreamEnd, false
		}
		select {
		case <-wake:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// backfill fetches [start, heldFrom) from upstream while the client waits
// in COPY mode, kept alive with keepalives.
func (s *session) backfill(tli walstream.TimeLineID, start, heldFrom walstream.LSN) error {
	s.mu.Lock()
	s.info.State, s.info.pinFrom = "backfill", start
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.srv.cfg.Backfill.Fetch(ctx, tli, start) }()
	tick := time.NewTicker(max(time.Second, s.srv.cfg.SenderTimeout/4))
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			_, durable := s.srv.cfg.Source.DurableEnd()
			if err := s.sendKeepalive(durable, false); err != nil {
				cancel()
				<-done
				return err
			}
		case <-s.srv.stopStreams:
			cancel()
			<-done
			return errors.New("relay shutting down")
		}
	}
}

// copyError sends an error that ends COPY mode, then ReadyForQuery.
func (s *session) copyError(pe *PGError) error {
	s.log.Info("START_REPLICATION refused", "sqlstate", pe.Code, "err", pe.Message)
	s.be.Send(pe.Response())
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return s.be.Flush()
}

// streamState is shared by a streaming session's sender (the run goroutine)
// and its receiver goroutine.
type streamState struct {
	lastRecv    atomic.Int64 // unix nanos of the last client message
	replyWanted chan struct{}
	recvDone    chan error
}

// stream sends WAL from start until the client ends COPY, disconnects, times
// out, or the server shuts down. The caller's goroutine is the only writer.
func (s *session) stream(tli walstream.TimeLineID, start walstream.LSN, slot string) error {
	src := s.srv.cfg.Source
	timeout := s.srv.cfg.SenderTimeout
	st := &streamState{replyWanted: make(chan struct{}, 1), recvDone: make(chan error, 1)}
	st.lastRecv.Store(time.Now().UnixNano())
	lag := newLagTracker()

	s.mu.Lock()
	s.info.State, s.info.Slot, s.info.Timeline, s.info.SentLSN, s.info.pinFrom = "streaming", slot, tli, start, start
	s.mu.Unlock()
	s.log.Info("streaming started", "timeline", tli, "start_lsn", start.String(), "slot", slot)
	defer func() {
		s.mu.Lock()
		s.info.State = "idle"
		s.mu.Unlock()
	}()

	recvExited := make(chan struct{})
	s.in.interval = replyReadInterval
	go func() {
		defer close(recvExited)
		defer func() { s.in.interval = 0 }()
		st.recvDone <- s.receiveLoop(st, lag, slot)
	}()
	// Any return other than CopyDone closes the connection, which ends the
	// receiver; CopyDone ends it by itself.
	closeConn := true
	defer func() {
		if closeConn {
			s.raw.Close()
		}
		<-recvExited
	}()

	every := s.srv.cfg.ReplyInterval
	period := min(time.Second, timeout/4)
	if every > 0 {
		period = min(period, max(every/2, 10*time.Millisecond))
	}
	tick := time.NewTicker(period)
	defer tick.Stop()
	// Messages sent through be (keepalives) are flushed at once, so these
	// direct writes never overtake buffered ones.
	ww := newWALWriter()
	if s.compress {
		enc, err := walstream.NewLinkEncoder()
		if err != nil {
			return err
		}
		defer enc.Close()
		ww.enc, ww.cast = enc, s.srv.cast
		ww.durableEnd = s.srv.cfg.Source.DurableEnd
		ww.limit = ww.currentLimit
	}
	pos := start
	pinged := false
	stopping := s.srv.stopStreams
	for {
		wake := src.Wait()
		durable, next, historic, err := s.streamEnd(tli)
		if err != nil {
			return err
		}
		if historic && pos >= durable {
			closeConn, err = s.endTimeline(st, next, durable)
			return err
		}
		if pos < durable {
			var err error
			if pos, err = s.sendWAL(ww, tli, pos, durable); err != nil {
				return err
			}
			lag.sent(pos, time.Now())
			s.mu.Lock()
			s.info.SentLSN = pos
			s.mu.Unlock()
			select {
			case <-st.replyWanted:
				if err := s.sendKeepalive(durable, false); err != nil {
					return err
				}
			case err := <-st.recvDone:
				closeConn = !errors.Is(err, errCopyDone)
				return s.endStream(err)
			default:
			}
			continue
		}
		select {
		case <-wake:
		case <-st.replyWanted:
			if err := s.sendKeepalive(durable, false); err != nil {
				return err
			}
		case err := <-st.recvDone:
			closeConn = !errors.Is(err, errCopyDone)
			return s.endStream(err)
		case <-tick.C:
			silent := time.Since(time.Unix(0, st.lastRecv.Load()))
			if silent > timeout {
				s.log.Warn("terminating stream due to replication timeout", "timeout", timeout)
				return errors.New("replication timeout")
			}
			if silent > timeout/2 && !pinged {
				pinged = true
				if err := s.sendKeepalive(durable, true); err != nil {
					return err
				}
			} else if silent < timeout/2 {
				pinged = false
			}
			if every > 0 && silent >= every && !pinged {
				if err := s.sendKeepalive(durable, true); err != nil {
					return err
				}
			}
		case <-stopping:
			stopping = nil // handled once: finish below
			return s.finishStream(st, pos)
		}
	}
}

// replyReadInterval spaces the reads of a streaming child's replies (see
// pacedReader).
const replyReadInterval = 10 * time.Millisecond

// catchupLag is how far behind the durable end a child counts as catching
// up rather than following the tip.
const catchupLag = 4 << 20

// walWriter frames XLogData messages straight from the store's memory into
// one writev per batch: the WAL bytes are copied once, by the kernel.
type walWriter struct {
	hdrs    []byte // CopyData + XLogData headers, one per message
	scratch []byte // disk reads land here
	iov     [][]byte
	views   []walstream.View // pins on the store's memory behind iov
	// On a compressed link, 'z' headers and the child's own compressed
	// bytes are built in zout; shared chunks are written from the cast.
	enc    *walstream.LinkEncoder
	cast   *linkCast
	zout   []byte
	follow castFollow
	inZ    bool // a zstd frame is open in the child's decoder
	ownZ   bool // ...and it is enc's
	// durableEnd reads the source's timeline and durable end, for a shared
	// chunk that ends past the end the batch began with (see linkCast.take).
	durableEnd func() (walstream.TimeLineID, walstream.LSN)
	limitTLI   walstream.TimeLineID
	limitEnd   walstream.LSN
	limit      func() walstream.LSN // w.currentLimit, bound once
}

const (
	sendBatch       = 1 << 20 // bytes per writev
	maxBatchMsgs    = 64
	copyDataHdrLen  = 5 // 'd' + int32 length
	walMsgHeaderLen = copyDataHdrLen + walstream.XLogDataHeaderLen
)

func newWALWriter() *walWriter {
	return &walWriter{
		hdrs:    make([]byte, 0, maxBatchMsgs*walMsgHeaderLen),
		scratch: make([]byte, sendBatch+walstream.MaxSendSize),
		iov:     make([][]byte, 0, 2*maxBatchMsgs),
	}
}

// sendWAL sends durable WAL from pos toward end in walsender-sized messages
// (at most MaxSendSize, cut at a page boundary when more is pending), about
// 1 MiB per write, and returns the new position.
func (s *session) sendWAL(w *walWriter, tli walstream.TimeLineID, pos, end walstream.LSN) (walstream.LSN, error) {
	hdrs, iov, used, sent := w.hdrs[:0], w.iov[:0], 0, 0
	defer w.release()
	now := walstream.PGTime(time.Now())
	for pos < end && sent < sendBatch && len(iov) < cap(iov) {
		stop := end
		if stop-pos > walstream.MaxSendSize {
			stop = pos + walstream.MaxSendSize
			stop -= stop % walstream.PageSize
		}
		if w.enc != nil {
			// Reach every window boundary exactly, where the shared
			// compressed stream can be joined.
			stop = min(stop, castBoundary(pos))
		}
		scratch := w.scratch[used : used+int(stop-pos)]
		data, v, err := s.readWAL(tli, pos, scratch)
		w.views = append(w.views, v)
		if err != nil {
			if errors.Is(err, walstream.ErrWALRemoved) {
				return pos, errorf("58P01", "%s", err.Error())
			}
			return pos, fmt.Errorf("read WAL at %s: %w", pos, err)
		}
		if len(data) == 0 {
			break
		}
		if w.enc != nil {
			n, err := w.appendCompressed(tli, pos, end, now, data, &iov)
			if err != nil {
				return pos, err
			}
			pos += walstream.LSN(n)
			sent += n
			continue
		}
		if &data[0] == &scratch[0] {
			used += len(data)
		}
		h := len(hdrs)
		hdrs = append(hdrs, 'd')
		hdrs = binary.BigEndian.AppendUint32(hdrs, uint32(4+walstream.XLogDataHeaderLen+len(data)))
		hdrs = walstream.AppendXLogDataHeader(hdrs, pos, end, now)
		iov = append(iov, hdrs[h:len(hdrs):len(hdrs)], data)
		pos += walstream.LSN(len(data))
		sent += len(data)
	}
	if sent == 0 {
		// pos < end, so the WAL should be there: do not spin.
		return pos, errorf("58P01", "requested WAL at %s on timeline %d is not available on this relay", pos, tli)
	}
	bufs := net.Buffers(iov)
	w.zout = w.zout[:0]
	wire, err := s.writeBatch(&bufs, end-pos > catchupLag)
	if err != nil {
		return pos, fmt.Errorf("send WAL at %s: %w", pos, err)
	}
	s.srv.m.sentBytes.Add(float64(sent))
	s.srv.m.sentWireBytes.Add(float64(wire))
	s.mu.Lock()
	s.info.SentBytes += uint64(sent)
	s.info.SentWireBytes += uint64(wire)
	s.mu.Unlock()
	return pos, nil
}

// readWAL reads WAL of timeline tli. Before a switch point a later
// timeline's file holds the same bytes (PostgreSQL itself reads the switch
// segment from the new timeline's file), so a relay that started after a
// switch still serves the old timeline's tail.
func (s *session) readWAL(tli walstream.TimeLineID, pos walstream.LSN, buf []byte) ([]byte, walstream.View, error) {
	src := s.srv.cfg.Source
	data, v, err := src.Read(tli, pos, buf)
	if errors.Is(err, walstream.ErrCorrupt) {
		v.Release()
		data, v, err = s.refetchCorrupt(tli, pos, buf, err)
	}
	if len(data) > 0 || (err != nil && !errors.Is(err, walstream.ErrWALRemoved)) {
		return data, v, err
	}
	v.Release()
	cur, _ := src.DurableEnd()
	for t := tli + 1; t <= cur; t++ {
		d, v, e := src.Read(t, pos, buf)
		if e == nil && len(d) > 0 {
			return d, v, nil
		}
		v.Release()
	}
	return data, walstream.View{}, err
}

// refetchCorrupt replaces a segment whose compressed frame failed its
// checksum with a copy from upstream, then reads again. Damaged bytes are
// never sent.
func (s *session) refetchCorrupt(tli walstream.TimeLineID, pos walstream.LSN, buf []byte, cause error) ([]byte, walstream.View, error) {
	s.srv.m.corrupt.Inc()
	s.log.Error("corrupt WAL in the store; fetching the segment again from upstream", "lsn", pos.String(), "err", cause)
	if s.srv.cfg.Backfill == nil {
		return nil, walstream.View{}, cause
	}
	id, _ := s.srv.cfg.Source.Identity()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := s.srv.cfg.Backfill.Refetch(ctx, tli, pos.SegmentNo(id.SegmentSize)); err != nil {
		return nil, walstream.View{}, errorf("XX001", "WAL at %s is corrupt on this relay and could not be fetched again: %v", pos, err)
	}
	s.log.Info("segment fetched again after corruption", "lsn", pos.String())
	return s.srv.cfg.Source.Read(tli, pos, buf)
}

// writeBatch writes a batch. A child catching up (far behind the tip) first
// takes one of the server's few catch-up turns, so that a crowd reading old
// WAL cannot keep the children at the tip waiting for CPU; it holds the turn
// only while its socket accepts data at once, then finishes the write
// without it, so a stalled child never blocks the others.
func (s *session) writeBatch(bufs *net.Buffers, catchingUp bool) (int64, error) {
	var wrote int64
	if catchingUp {
		// Rate limits first, so that a limited child never holds a turn
		// while it waits.
		if s.catchupLimit != nil || s.srv.catchupTotal != nil {
			n := 0
			for _, b := range *bufs {
				n += len(b)
			}
			waitBytes(n, s.catchupLimit, s.srv.catchupTotal)
		}
		s.srv.catchup <- struct{}{}
		s.conn.SetWriteDeadline(time.Now().Add(catchupTurn))
		n, err := bufs.WriteTo(s.conn)
		<-s.srv.catchup
		wrote = n
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return wrote, err
		}
	}
	s.conn.SetWriteDeadline(time.Now().Add(s.srv.cfg.SenderTimeout))
	n, err := bufs.WriteTo(s.conn)
	return wrote + n, err
}

// catchupTurn is how long a catching-up child may hold its turn waiting for
// its socket.
const catchupTurn = 20 * time.Millisecond

// release unpins the store memory the last batch was built from: written
// (or failed), it is no longer referenced.
func (w *walWriter) release() {
	for i, v := range w.views {
		v.Release()
		w.views[i] = walstream.View{}
	}
	w.views = w.views[:0]
}

// appendCompressed adds one 'z' message to iov: the shared stream's chunk
// at pos when the child can take it, else data compressed by the child's
// own encoder. It returns the WAL bytes the message holds.
func (w *walWriter) appendCompressed(tli walstream.TimeLineID, pos, end walstream.LSN, now int64, data []byte, iov *[][]byte) (int, error) {
	w.limitTLI, w.limitEnd = tli, end
	ch, follow, shared, err := w.cast.take(tli, pos, w.limit, data, w.follow)
	if err != nil {
		return 0, err
	}
	// Every switch of encoder, and every chunk at a window's start, begins
	// a frame; the one the child is in ends first.
	newFrame := shared && (follow != w.follow || pos%castWindow == 0) || !shared && !w.ownZ
	var payload []byte
	raw := len(data)
	if shared {
		payload, raw = ch.payload, int(ch.end-ch.start)
		w.follow, w.ownZ = follow, false
	} else {
		if newFrame {
			w.enc.NewFrame()
		}
		comp, err := w.enc.Compress(data)
		if err != nil {
			return 0, fmt.Errorf("compress WAL at %s: %w", pos, err)
		}
		w.cast.compressed.Add(float64(len(data)))
		payload = comp
		w.follow, w.ownZ = castFollow{}, true
	}
	var frameEnd []byte
	if newFrame && w.inZ {
		frameEnd = walstream.LinkFrameEnd
	}
	w.inZ = true
	h := len(w.zout)
	w.zout = append(w.zout, 'd')
	w.zout = binary.BigEndian.AppendUint32(w.zout, uint32(4+29+len(frameEnd)+len(payload)))
	w.zout = walstream.AppendCompressedHeader(w.zout, pos, end, now, raw)
	w.zout = append(w.zout, frameEnd...)
	if !shared {
		// comp is the encoder's buffer: copy it before the next message.
		w.zout = append(w.zout, payload...)
		*iov = append(*iov, w.zout[h:len(w.zout):len(w.zout)])
		return raw, nil
	}
	*iov = append(*iov, w.zout[h:len(w.zout):len(w.zout)], payload)
	return raw, nil
}

// currentLimit is how far the child may be sent WAL of limitTLI now: the
// durable end while that timeline is the source's newest, else the end the
// batch began with (its switch point, or less).
func (w *walWriter) currentLimit() walstream.LSN {
	if tli, durable := w.durableEnd(); tli == w.limitTLI {
		return max(durable, w.limitEnd)
	}
	return w.limitEnd
}

func (s *session) sendKeepalive(walEnd walstream.LSN, replyRequested bool) error {
	var b [18]byte
	msg := walstream.AppendKeepalive(b[:0], walstream.Keepalive{
		WALEnd: walEnd, SendTime: walstream.PGTime(time.Now()), ReplyRequested: replyRequested,
	})
	s.be.Send(&pgproto3.CopyData{Data: msg})
	s.conn.SetWriteDeadline(time.Now().Add(s.srv.cfg.SenderTimeout))
	return s.be.Flush()
}

// endStream handles the receiver's verdict. After the client's CopyDone the
// session goes back to command mode exactly as a walsender does.
func (s *session) endStream(err error) error {
	if !errors.Is(err, errCopyDone) {
		return err
	}
	s.log.Info("client ended streaming")
	s.be.Send(&pgproto3.CopyDone{})
	s.be.Send(&pgproto3.CommandComplete{CommandTag: []byte("START_STREAMING")})
	s.be.Send(&pgproto3.CommandComplete{CommandTag: []byte("START_REPLICATION")})
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return s.be.Flush()
}

// finishStream is WalSndDone: once the client confirms everything sent,
// CommandComplete "COPY 0" and close; ask for a reply while it has not.
func (s *session) finishStream(st *streamState, sent walstream.LSN) error {
	deadline := time.After(s.srv.cfg.ShutdownGrace)
	for {
		s.mu.Lock()
		confirmed := s.info.FlushLSN
		if confirmed == walstream.InvalidLSN {
			confirmed = s.info.WriteLSN
		}
		s.mu.Unlock()
		if confirmed >= sent {
			s.be.Send(&pgproto3.CommandComplete{CommandTag: []byte("COPY 0")})
			s.be.Flush()
			s.log.Info("stream finished for shutdown", "sent_lsn", sent.String())
			return nil
		}
		if err := s.sendKeepalive(sent, true); err != nil {
			return err
		}
		select {
		case <-deadline:
			s.log.Warn("client did not confirm the last WAL before shutdown", "sent_lsn", sent.String(), "confirmed_lsn", confirmed.String())
			return nil
		case err := <-st.recvDone:
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// receiveLoop reads the client's messages while streaming. It returns
// errCopyDone, io.EOF (Terminate or disconnect) or a protocol error.
func (s *session) receiveLoop(st *streamState, lag *lagTracker, slot string) error {
	for {
		msg, err := s.be.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return io.EOF
			}
			return fatalf("08P01", "invalid standby message: %v", err)
		}
		now := time.Now()
		st.lastRecv.Store(now.UnixNano())
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handleStandbyMessage(msg.Data, now, lag, slot, st); err != nil {
				return err
			}
		case *pgproto3.CopyDone:
			return errCopyDone
		case *pgproto3.Terminate:
			return io.EOF
		default:
			return fatalf("08P01", "invalid standby message type \"%c\"", frontendType(msg))
		}
	}
}

func (s *session) handleStandbyMessage(data []byte, now time.Time, lag *lagTracker, slot string, st *streamState) error {
	if len(data) == 0 {
		return fatalf("08P01", "invalid standby message: empty CopyData")
	}
	switch data[0] {
	case walstream.MsgStandbyStatus:
		r, err := walstream.ParseStandbyStatus(data)
		if err != nil {
			return fatalf("08P01", "%v", err)
		}
		w, f, a := lag.reply(r.Write, r.Flush, r.Apply, now)
		_, durable := s.srv.cfg.Source.DurableEnd()
		confirmed := r.Flush
		if confirmed == walstream.InvalidLSN {
			confirmed = r.Write
		}
		s.mu.Lock()
		s.info.WriteLSN, s.info.FlushLSN, s.info.ReplayLSN = r.Write, r.Flush, r.Apply
		s.info.LastReplyAt = now
		s.info.LagBytes = 0
		if durable > confirmed {
			s.info.LagBytes = uint64(durable - confirmed)
		}
		s.info.WriteLagSeconds, s.info.FlushLagSeconds, s.info.ReplayLagSeconds = w.Seconds(), f.Seconds(), a.Seconds()
		if confirmed != walstream.InvalidLSN && confirmed < s.info.SentLSN {
			s.info.pinFrom = confirmed
		} else {
			s.info.pinFrom = s.info.SentLSN
		}
		s.mu.Unlock()
		if slot != "" && r.Flush != walstream.InvalidLSN {
			s.srv.slots.advance(slot, r.Flush)
		}
		if r.ReplyRequested {
			select {
			case st.replyWanted <- struct{}{}:
			default:
			}
		}
	case walstream.MsgHotStandbyFeed:
		h, err := walstream.ParseHotStandbyFeedback(data)
		if err != nil {
			return fatalf("08P01", "%v", err)
		}
		s.mu.Lock()
		s.info.Xmin, s.info.XminEpoch = h.Xmin, h.XminEpoch
		s.info.CatalogXmin, s.info.CatalogXminEpoch = h.CatalogXmin, h.CatalogXminEpoch
		s.mu.Unlock()
	default:
		return fatalf("08P01", "unexpected message type \"%c\"", data[0])
	}
	return nil
}

// frontendType names a message the way PostgreSQL's errors do.
func frontendType(msg pgproto3.FrontendMessage) byte {
	switch msg.(type) {
	case *pgproto3.Query:
		return 'Q'
	case *pgproto3.Parse:
		return 'P'
	case *pgproto3.Bind:
		return 'B'
	case *pgproto3.Execute:
		return 'E'
	case *pgproto3.Sync:
		return 'S'
	case *pgproto3.Describe:
		return 'D'
	case *pgproto3.CopyFail:
		return 'f'
	default:
		return '?'
	}
}

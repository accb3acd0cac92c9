package relay

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"golang.org/x/time/rate"

	"github.com/walrelay/walrelay/walstream"
)

// maxMessageLen bounds a client message: a replication client never sends
// more.
const maxMessageLen = 1 << 20

// session is one client connection. Its run goroutine owns the connection:
// it reads commands, and while streaming it hands reads to a receiver
// goroutine and keeps all writes for itself.
type session struct {
	srv *Server
	// raw is the accepted socket, closed from other goroutines to end the
	// session; conn (TLS on top of it once negotiated) and be belong to
	// the session's goroutines and change only during startup.
	raw  net.Conn
	conn net.Conn
	in   *pacedReader // what be reads from: conn, paced while streaming
	be   *pgproto3.Backend
	ssl  bool
	// peerCN is the common name of a verified client certificate.
	peerCN string
	// refused: admit turned the session away (guarded by srv.mu).
	refused bool
	pid     int32
	log     *slog.Logger

	// up is the connection to the relay's parent that commands passed
	// through use; the session goroutine alone touches it.
	up *ancestor

	compress   bool   // the client asked for a zstd link and was told yes
	protoMinor uint32 // protocol 3.protoMinor in use, after negotiation
	// catchupLimit bounds what this child is sent while far behind.
	catchupLimit *rate.Limiter

	mu       sync.Mutex
	info     SessionStatus
	started  bool // startup completed
	tempSlot []string
}

func newSession(srv *Server, conn net.Conn, pid int32) *session {
	in := &pacedReader{r: conn}
	be := pgproto3.NewBackend(in, conn)
	be.SetMaxBodyLen(maxMessageLen)
	return &session{
		srv:          srv,
		raw:          conn,
		conn:         conn,
		in:           in,
		be:           be,
		pid:          pid,
		log:          srv.log.With("client", conn.RemoteAddr().String(), "pid", pid),
		catchupLimit: newByteLimiter(srv.cfg.MaxCatchupRate),
		info:         SessionStatus{PID: pid, Address: conn.RemoteAddr().String(), State: "startup", ConnectedAt: time.Now()},
	}
}

func (s *session) run() {
	defer s.raw.Close()
	defer s.closeAncestor()
	defer s.dropTemporarySlots()
	if err := s.startup(); err != nil {
		s.srv.m.sessions.WithLabelValues("rejected").Inc()
		var pe *PGError
		if errors.As(err, &pe) {
			s.log.Info("connection rejected", "sqlstate", pe.Code, "err", pe.Message)
			s.sendError(pe)
		} else if !errors.Is(err, io.EOF) {
			s.log.Info("connection dropped during startup", "err", err)
		}
		return
	}
	err := s.commandLoop()
	switch {
	case err == nil || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed):
		s.srv.m.sessions.WithLabelValues("ok").Inc()
		s.log.Debug("client disconnected")
	default:
		s.srv.m.sessions.WithLabelValues("error").Inc()
		var pe *PGError
		if errors.As(err, &pe) {
			s.sendError(pe)
		}
		s.log.Info("client session ended", "err", err)
	}
}

func (s *session) sendError(pe *PGError) {
	s.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	s.be.Send(pe.Response())
	s.be.Flush()
}

// startup negotiates encryption (TLS when configured), reads the
// StartupMessage, applies the connection limits and access rules,
// authenticates and sends the parameters clients check. All of it must
// finish within the startup timeout, so half-open connections cannot pile
// up.
func (s *session) startup() error {
	s.conn.SetDeadline(time.Now().Add(s.srv.cfg.StartupTimeout))
	defer func() { s.conn.SetDeadline(time.Time{}) }()
	var sm *pgproto3.StartupMessage
	var minor uint32 // the protocol minor the client asked for
	for sm == nil {
		msg, m, err := readStartupPacket(s.in)
		minor = m
		if err != nil {
			var pe *PGError
			if errors.As(err, &pe) {
				return pe
			}
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return io.EOF
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("no startup packet within %s: %w", s.srv.cfg.StartupTimeout, io.EOF)
			}
			return fatalf("08P01", "invalid startup packet: %v", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.SSLRequest:
			if err := s.negotiateTLS(); err != nil {
				return err
			}
		case *pgproto3.GSSEncRequest:
			if _, err := s.conn.Write([]byte{'N'}); err != nil {
				return err
			}
		case *pgproto3.CancelRequest:
			return io.EOF
		case *pgproto3.StartupMessage:
			sm = msg
		}
	}
	if err := s.negotiateProtocol(sm, minor); err != nil {
		return err
	}
	user := sm.Parameters["user"]
	if user == "" {
		return fatalf("28000", "no PostgreSQL user name specified in startup packet")
	}
	if err := checkReplicationParam(sm.Parameters["replication"]); err != nil {
		return err
	}
	if err := s.srv.admit(s, user); err != nil {
		return err
	}
	id, ok := s.srv.cfg.Source.Identity()
	// The identity is bound a moment before the store starts on a
	// timeline: until then IDENTIFY_SYSTEM would say timeline 0 at 0/0.
	if tli, _ := s.srv.cfg.Source.DurableEnd(); !ok || tli == 0 {
		return fatalf("57P03", "the relay is starting up: it has not reached its upstream yet")
	}
	if err := s.authenticate(user); err != nil {
		return err
	}
	app := sm.Parameters["application_name"]
	// Only another relay asks for this; PostgreSQL clients never see it.
	s.compress = sm.Parameters[walstream.CompressionParam] == walstream.CompressionZstd
	s.mu.Lock()
	if s.compress {
		s.info.Compression = walstream.CompressionZstd
	}
	s.info.User, s.info.ApplicationName, s.info.State = user, app, "idle"
	s.info.Relay = sm.Parameters[walstream.NodeParam] != ""
	s.started = true
	s.mu.Unlock()
	s.log = s.log.With("application_name", app, "user", user)

	for _, p := range s.parameterStatus(id, app, user) {
		s.be.Send(&pgproto3.ParameterStatus{Name: p[0], Value: p[1]})
	}
	if s.compress {
		s.be.Send(&pgproto3.ParameterStatus{Name: walstream.CompressionParam, Value: walstream.CompressionZstd})
	}
	// Protocol 3.2 has variable-length cancel keys; PostgreSQL 18 sends 32
	// bytes.
	secret := make([]byte, 4)
	if s.protoMinor >= 2 {
		secret = make([]byte, 32)
	}
	rand.Read(secret)
	s.be.Send(&pgproto3.BackendKeyData{ProcessID: uint32(s.pid), SecretKey: secret})
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return s.be.Flush()
}

// checkReplicationParam accepts only physical replication connections.
func checkReplicationParam(v string) error {
	switch strings.ToLower(v) {
	case "true", "on", "yes", "1":
		return nil
	case "database":
		return fatalf("0A000", "walrelay serves physical replication only: logical replication (replication=database) must connect to the primary")
	case "", "false", "off", "no", "0":
		return fatalf("0A000", "walrelay serves physical replication only: connect with replication=true, or run SQL on the primary or a standby")
	default:
		return fatalf("22023", "invalid value for parameter \"replication\": \"%s\"", v)
	}
}

// parameterStatus is what a PostgreSQL 15 walsender announces after auth.
func (s *session) parameterStatus(id walstream.Identity, app, user string) [][2]string {
	version := s.srv.cfg.Source.ServerVersion()
	if version == "" {
		version = "15.0"
	}
	return [][2]string{
		{"application_name", app},
		{"client_encoding", "UTF8"},
		{"DateStyle", "ISO, MDY"},
		{"default_transaction_read_only", "off"},
		{"in_hot_standby", "off"},
		{"integer_datetimes", "on"},
		{"IntervalStyle", "postgres"},
		{"is_superuser", "on"},
		{"server_encoding", "UTF8"},
		{"server_version", version},
		{"session_authorization", user},
		{"standard_conforming_strings", "on"},
		{"TimeZone", "UTC"},
	}
}

// commandLoop reads simple-protocol queries until the client leaves.
func (s *session) commandLoop() error {
	for {
		msg, err := s.be.Receive()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return io.EOF
			}
			return fatalf("08P01", "invalid frontend message: %v", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.Query:
			if err := s.execQuery(msg.String); err != nil {
				return err
			}
		case *pgproto3.Terminate:
			return nil
		case *pgproto3.Parse, *pgproto3.Bind, *pgproto3.Describe, *pgproto3.Execute, *pgproto3.Close, *pgproto3.FunctionCall:
			if err := s.rejectExtended(); err != nil {
				return err
			}
		case *pgproto3.Sync:
			s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			if err := s.be.Flush(); err != nil {
				return err
			}
		case *pgproto3.Flush, *pgproto3.CopyData, *pgproto3.CopyDone, *pgproto3.CopyFail:
			// Ignored outside COPY, as a walsender does.
		default:
			return fatalf("08P01", "invalid frontend message type %T", msg)
		}
	}
}

// rejectExtended answers an extended-protocol message and skips the rest of
// that batch up to its Sync.
func (s *session) rejectExtended() error {
	s.be.Send(errorf("08P01", "extended query protocol not supported in a replication connection").Response())
	if err := s.be.Flush(); err != nil {
		return err
	}
	for {
		msg, err := s.be.Receive()
		if err != nil {
			return err
		}
		switch msg.(type) {
		case *pgproto3.Sync:
			s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			return s.be.Flush()
		case *pgproto3.Terminate:
			return io.EOF
		}
	}
}

// execQuery runs one replication command. Errors the client should see as
// ERROR are sent here and keep the connection usable; a returned error ends
// the session.
func (s *session) execQuery(q string) error {
	cmd, err := ParseCommandFor(q, walstream.MajorVersion(s.srv.cfg.Source.ServerVersion()))
	if errors.Is(err, ErrEmptyQuery) {
		s.be.Send(&pgproto3.EmptyQueryResponse{})
		s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		return s.be.Flush()
	}
	if err == nil {
		s.log.Debug("command", "query", q)
		err = s.exec(cmd)
	}
	var pe *PGError
	if errors.As(err, &pe) && pe.Severity != "FATAL" {
		s.log.Info("command failed", "query", q, "sqlstate", pe.Code, "err", pe.Message)
		s.be.Send(pe.Response())
		s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
		return s.be.Flush()
	}
	return err
}

func (s *session) exec(cmd Command) error {
	switch cmd.Kind {
	case CmdIdentifySystem:
		return s.identifySystem()
	case CmdShow:
		return s.show(cmd.Setting)
	case CmdTimelineHistory:
		return s.timelineHistory(cmd.Timeline)
	case CmdReadReplicationSlot:
		return s.readReplicationSlot(cmd.Slot)
	case CmdCreateReplicationSlot:
		return s.createReplicationSlot(cmd)
	case CmdDropReplicationSlot:
		return s.dropReplicationSlot(cmd)
	case CmdStartReplication:
		if cmd.Logical {
			return errorf("0A000", "walrelay serves physical replication only: stream logical replication from the primary")
		}
		return s.startReplication(cmd)
	case CmdBaseBackup:
		return s.passThrough(cmd, "BASE_BACKUP")
	case CmdUploadManifest:
		return s.passThrough(cmd, "UPLOAD_MANIFEST")
	case CmdAlterReplicationSlot:
		return s.alterReplicationSlot(cmd)
	default:
		return errorf("0A000", "command not supported by walrelay: %s", cmd.Raw)
	}
}

func (s *session) identifySystem() error {
	id, _ := s.srv.cfg.Source.Identity()
	tli, end := s.srv.cfg.Source.DurableEnd()
	return s.sendResult("IDENTIFY_SYSTEM",
		[]column{textCol("systemid"), int4Col("timeline"), textCol("xlogpos"), textCol("dbname")},
		[][]any{{strconv.FormatUint(id.SystemID, 10), int64(tli), end.String(), nil}})
}

func (s *session) show(setting string) error {
	id, _ := s.srv.cfg.Source.Identity()
	var value string
	switch setting {
	case "wal_segment_size":
		value = walstream.FormatSegmentSize(id.SegmentSize)
	case "data_directory_mode":
		value = "0700"
	case "server_version":
		value = s.srv.cfg.Source.ServerVersion()
	case "wal_block_size":
		value = strconv.Itoa(walstream.PageSize)
	case "integer_datetimes":
		value = "on"
	case "server_encoding", "client_encoding":
		value = "UTF8"
	default:
		return errorf("42704", "unrecognized configuration parameter \"%s\"", setting)
	}
	return s.sendResult("SHOW", []column{textCol(setting)}, [][]any{{value}})
}

func (s *session) timelineHistory(tli walstream.TimeLineID) error {
	content, ok := s.srv.cfg.Source.History(tli)
	name := walstream.HistoryFileName(tli)
	if !ok {
		return errorf("58P01", "could not open file \"pg_wal/%s\": No such file or directory", name)
	}
	// content carries typmod 0, not -1, exactly like a walsender.
	cols := []column{textCol("filename"), {name: "content", oid: oidText, size: -1, typmod: 0}}
	return s.sendResult("TIMELINE_HISTORY", cols, [][]any{{name, string(content)}})
}

func (s *session) readReplicationSlot(name string) error {
	cols := []column{textCol("slot_type"), textCol("restart_lsn"), int8Col("restart_tli")}
	sl, ok := s.srv.slots.get(name)
	switch {
	case !ok:
		return s.sendResult("READ_REPLICATION_SLOT", cols, [][]any{{nil, nil, nil}})
	case sl.RestartLSN == walstream.InvalidLSN:
		return s.sendResult("READ_REPLICATION_SLOT", cols, [][]any{{"physical", nil, nil}})
	default:
		return s.sendResult("READ_REPLICATION_SLOT", cols, [][]any{{"physical", sl.RestartLSN.String(), int64(sl.RestartTLI)}})
	}
}

func (s *session) createReplicationSlot(cmd Command) error {
	if cmd.Logical {
		return errorf("0A000", "walrelay serves physical replication only: create logical replication slots on the primary")
	}
	var restart walstream.LSN
	var tli walstream.TimeLineID
	if cmd.ReserveWAL {
		// Like a standby: reserve from the oldest WAL a new client could
		// still need, the segment holding the current end.
		var end walstream.LSN
		tli, end = s.srv.cfg.Source.DurableEnd()
		id, _ := s.srv.cfg.Source.Identity()
		restart = end.SegmentStart(id.SegmentSize)
	}
	// A relay's own slot on its parent stays here: mirroring it would make
	// the primary feed every relay of the tree once more.
	s.mu.Lock()
	fromRelay := s.info.Relay
	s.mu.Unlock()
	mirror := !cmd.Temporary && !fromRelay && s.srv.cfg.MirrorSlots && s.upstreamConnString() != ""
	if mirror {
		if err := checkSlotName(cmd.Slot); err != nil {
			return err
		}
		if _, ok := s.srv.slots.get(cmd.Slot); ok {
			return errorf("42710", "replication slot \"%s\" already exists", cmd.Slot)
		}
		if err := s.createUpstreamSlot(cmd.Slot, cmd.ReserveWAL); err != nil {
			return err
		}
	}
	if err := s.srv.slots.create(cmd.Slot, cmd.Temporary, restart, tli, mirror); err != nil {
		return err
	}
	if cmd.Temporary {
		s.mu.Lock()
		s.tempSlot = append(s.tempSlot, cmd.Slot)
		s.mu.Unlock()
	}
	s.log.Info("replication slot created", "slot", cmd.Slot, "temporary", cmd.Temporary, "restart_lsn", restart.String())
	return s.sendResult("CREATE_REPLICATION_SLOT",
		[]column{textCol("slot_name"), textCol("consistent_point"), textCol("snapshot_name"), textCol("output_plugin")},
		[][]any{{cmd.Slot, "0/0", nil, nil}})
}

// alterReplicationSlot answers for the relay's own slots, which are
// physical, as PostgreSQL does for a physical slot; a slot the relay does not
// hold is the nearest PostgreSQL ancestor's to alter (a logical failover
// slot on the primary, say).
func (s *session) alterReplicationSlot(cmd Command) error {
	if _, ok := s.srv.slots.get(cmd.Slot); ok {
		return errorf("0A000", "cannot use ALTER_REPLICATION_SLOT with a physical replication slot")
	}
	return s.passThrough(cmd, "ALTER_REPLICATION_SLOT")
}

func (s *session) dropReplicationSlot(cmd Command) error {
	sl, _ := s.srv.slots.get(cmd.Slot)
	deadline := time.Now().Add(s.srv.cfg.SenderTimeout)
	for {
		err := s.srv.slots.drop(cmd.Slot)
		var pe *PGError
		if cmd.Wait && errors.As(err, &pe) && pe.Code == "55006" && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	if sl.Upstream {
		s.dropUpstreamSlot(cmd.Slot)
	}
	s.log.Info("replication slot dropped", "slot", cmd.Slot)
	s.be.Send(&pgproto3.CommandComplete{CommandTag: []byte("DROP_REPLICATION_SLOT")})
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return s.be.Flush()
}

func (s *session) dropTemporarySlots() {
	s.mu.Lock()
	names := s.tempSlot
	s.tempSlot = nil
	s.mu.Unlock()
	for _, n := range names {
		s.srv.slots.release(n, s.pid)
		if err := s.srv.slots.drop(n); err != nil {
			s.log.Warn("drop temporary slot", "slot", n, "err", err)
		}
	}
}

func (s *session) status() (SessionStatus, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info, s.started
}

func (s *session) isStreaming() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info.State == "streaming"
}

// pinned is the oldest position this session's stream may still read.
func (s *session) pinned() (walstream.LSN, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.info.State != "streaming" && s.info.State != "backfill" {
		return 0, false
	}
	p := s.info.pinFrom
	return p, true
}

// column describes one result column (text format, no table).
type column struct {
	name   string
	oid    uint32
	size   int16
	typmod int32
}

const (
	oidText = 25
	oidInt4 = 23
	oidInt8 = 20
)

func textCol(name string) column { return column{name: name, oid: oidText, size: -1, typmod: -1} }
func int4Col(name string) column { return column{name: name, oid: oidInt4, size: 4, typmod: -1} }
func int8Col(name string) column { return column{name: name, oid: oidInt8, size: 8, typmod: -1} }

// sendResult sends a result set, CommandComplete and ReadyForQuery. Values
// are string, int64 or nil (NULL).
func (s *session) sendResult(tag string, cols []column, rows [][]any) error {
	rd := &pgproto3.RowDescription{Fields: make([]pgproto3.FieldDescription, len(cols))}
	for i, c := range cols {
		rd.Fields[i] = pgproto3.FieldDescription{
			Name: []byte(c.name), DataTypeOID: c.oid, DataTypeSize: c.size, TypeModifier: c.typmod,
		}
	}
	s.be.Send(rd)
	for _, row := range rows {
		dr := &pgproto3.DataRow{Values: make([][]byte, len(row))}
		for i, v := range row {
			switch v := v.(type) {
			case nil:
			case string:
				dr.Values[i] = []byte(v)
			case int64:
				dr.Values[i] = strconv.AppendInt(nil, v, 10)
			default:
				panic(fmt.Sprintf("sendResult: unsupported value %T", v))
			}
		}
		s.be.Send(dr)
	}
	s.be.Send(&pgproto3.CommandComplete{CommandTag: []byte(tag)})
	s.be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	return s.be.Flush()
}

// negotiateTLS answers an SSLRequest: 'S' and a TLS handshake when the
// relay has a certificate, 'N' (go on in plain text) when not.
func (s *session) negotiateTLS() error {
	tr := s.srv.cfg.TLS
	if tr == nil || s.ssl {
		_, err := s.conn.Write([]byte{'N'})
		return err
	}
	if _, err := s.conn.Write([]byte{'S'}); err != nil {
		return err
	}
	tc := tls.Server(s.conn, tr.Config())
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w: %w", err, io.EOF)
	}
	s.conn, s.ssl = tc, true
	s.in = &pacedReader{r: tc}
	s.be = pgproto3.NewBackend(s.in, tc)
	s.be.SetMaxBodyLen(maxMessageLen)
	if st := tc.ConnectionState(); len(st.VerifiedChains) > 0 {
		s.peerCN = st.PeerCertificates[0].Subject.CommonName
	}
	s.mu.Lock()
	s.info.SSL = true
	s.mu.Unlock()
	return nil
}

// authenticate applies the first matching access rule (or the default
// when there are none) and runs its method.
func (s *session) authenticate(user string) error {
	remote := s.conn.RemoteAddr()
	method := defaultMethod(s.srv.cfg.Credentials, remote)
	if rules := s.srv.rules.Load(); rules != nil {
		r, ok := rules.Match(user, remote, s.ssl)
		if !ok {
			return fatalf("28000", "no access rule for host \"%s\", user \"%s\", %s", hostOf(remote), user, encryption(s.ssl))
		}
		method = r.Method
	}
	switch method {
	case MethodTrust:
		s.be.Send(&pgproto3.AuthenticationOk{})
		return s.be.Flush()
	case MethodReject:
		if s.srv.rules.Load() == nil {
			return fatalf("28000", "no users configured on this relay: only loopback clients are trusted (configure --auth-file)")
		}
		return fatalf("28000", "access rules reject connection for host \"%s\", user \"%s\", %s", hostOf(remote), user, encryption(s.ssl))
	case MethodCert:
		if !s.ssl || s.peerCN == "" {
			return fatalf("28000", "connection requires a valid client certificate")
		}
		if s.peerCN != user {
			return fatalf("28000", "certificate authentication failed for user \"%s\"", user)
		}
		s.be.Send(&pgproto3.AuthenticationOk{})
		return s.be.Flush()
	default:
		return authenticateSCRAM(s.be, user, s.srv.cfg.Credentials)
	}
}

func hostOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	return a.String()
}

func encryption(ssl bool) string {
	if ssl {
		return "SSL encryption"
	}
	return "no encryption"
}

func (s *session) user() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.info.User
}

// pacedReader spaces out the reads the backend makes when its buffer is
// empty. A streaming child replies after every write it receives (a
// walreceiver twice: written, then flushed); read as they come, that is a
// wakeup and a read call per reply per child, the relay's largest cost after
// the writes under a load of small commits. Paced, each read takes all the
// replies that came meanwhile. Nothing waits on children's replies but
// reporting (lag, slots, the replica feed), which is fresh to within the
// interval; a reader idle longer than the interval reads at once.
type pacedReader struct {
	r        io.Reader
	interval time.Duration // 0: not paced; set by the session's goroutines only while no read is under way
	last     time.Time
}

func (p *pacedReader) Read(b []byte) (int, error) {
	if p.interval > 0 {
		if d := p.interval - time.Since(p.last); d > 0 {
			time.Sleep(d)
		}
	}
	n, err := p.r.Read(b)
	p.last = time.Now()
	return n, err
}

package relay

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Commands the relay cannot answer from its own store go, verbatim, to the
// relay's parent. A parent that is itself a relay does the same, so they
// reach the nearest ancestor that is a PostgreSQL server, and the client gets
// that server's answer, whatever its major: BASE_BACKUP (the WAL part of
// `pg_basebackup -X stream` is served by this relay from its store),
// UPLOAD_MANIFEST and ALTER_REPLICATION_SLOT of PostgreSQL 17 on.
//
// A session holds its connection to the parent once opened, because some
// state lives in the ancestor's walsender session: the manifest uploaded by
// UPLOAD_MANIFEST is used by the next BASE_BACKUP (INCREMENTAL) of the same
// session (pg_basebackup --incremental).
type ancestor struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

// firstAnswerTimeout bounds the wait for the first message of the
// ancestor's answer.
const firstAnswerTimeout = time.Hour

// ancestorConn returns the session's connection to the relay's parent,
// opening it if needed. what names the command in errors.
func (s *session) ancestorConn(what string) (*ancestor, error) {
	if s.up != nil {
		return s.up, nil
	}
	conninfo := s.upstreamConnString()
	if conninfo == "" {
		return nil, errorf("0A000", "%s is not available on this relay: it has no upstream to pass the command to; run it on the primary or a standby (for a base backup: pg_basebackup -h PRIMARY, then point primary_conninfo at the relay)", what)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	up, err := dialReplication(ctx, conninfo, s.srv.cfg.NodeID+"_passthrough")
	if err != nil {
		return nil, errorf("08006", "%s: cannot reach this relay's upstream to pass the command through: %v", what, err)
	}
	// Never hand out a backup of, or touch a slot on, another cluster than
	// the one whose WAL we serve.
	res, err := up.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil || len(res) == 0 || len(res[0].Rows) == 0 {
		up.Close(context.Background())
		return nil, errorf("08006", "%s: IDENTIFY_SYSTEM on the upstream failed: %v", what, err)
	}
	id, _ := s.srv.cfg.Source.Identity()
	if got := string(res[0].Rows[0][0]); got != fmt.Sprint(id.SystemID) {
		up.Close(context.Background())
		return nil, errorf("XX000", "%s: the upstream has system identifier %s, this relay serves %d", what, got, id.SystemID)
	}
	hc, err := up.Hijack()
	if err != nil {
		up.Close(context.Background())
		return nil, err
	}
	s.up = &ancestor{conn: hc.Conn, fe: hc.Frontend}
	return s.up, nil
}

// upstreamConnString is the relay's parent's connection string, "" when it
// has none.
func (s *session) upstreamConnString() string {
	if f := s.srv.cfg.UpstreamConnString; f != nil {
		return f()
	}
	return ""
}

// dialReplication opens a physical replication connection to conninfo.
func dialReplication(ctx context.Context, conninfo, app string) (*pgconn.PgConn, error) {
	cfg, err := pgconn.ParseConfig(conninfo)
	if err != nil {
		return nil, fmt.Errorf("upstream connection string: %w", err)
	}
	cfg.RuntimeParams["replication"] = "true"
	cfg.RuntimeParams["application_name"] = app
	return pgconn.ConnectConfig(ctx, cfg)
}

// closeAncestor drops the session's connection to its parent.
func (s *session) closeAncestor() {
	if s.up != nil {
		s.up.conn.Close()
		s.up = nil
	}
}

// passThrough sends cmd to the nearest PostgreSQL ancestor and relays
// everything it answers up to its ReadyForQuery, which ends the command for
// the client too. When the ancestor asks for COPY data (UPLOAD_MANIFEST), the
// client's COPY messages go to it until CopyDone or CopyFail.
func (s *session) passThrough(cmd Command, what string) error {
	up, err := s.ancestorConn(what)
	if err != nil {
		return err
	}
	s.log.Info("passing a command through to the upstream", "query", cmd.Raw)
	up.fe.Send(&pgproto3.Query{String: cmd.Raw})
	if err := up.fe.Flush(); err != nil {
		s.closeAncestor()
		return errorf("08006", "%s: connection to the upstream lost: %v", what, err)
	}
	inCopy := false
	// BASE_BACKUP answers nothing until its checkpoint is done, which a
	// spread checkpoint takes minutes to be; after that the ancestor sends
	// steadily.
	wait := firstAnswerTimeout
	for {
		up.conn.SetReadDeadline(time.Now().Add(max(wait, s.srv.cfg.SenderTimeout)))
		msg, err := up.fe.Receive()
		wait = 0
		if err != nil {
			s.closeAncestor()
			if inCopy {
				// The client's stream is mid-copy: a FATAL is all it can take.
				return fatalf("08006", "%s: connection to the upstream lost: %v", what, err)
			}
			return errorf("08006", "%s: connection to the upstream lost: %v", what, err)
		}
		s.be.Send(msg)
		switch msg.(type) {
		case *pgproto3.ReadyForQuery:
			return s.be.Flush()
		case *pgproto3.CopyOutResponse, *pgproto3.CopyBothResponse:
			inCopy = true
		case *pgproto3.CopyData:
			if err := s.flushWithDeadline(); err != nil {
				return err
			}
		case *pgproto3.CopyInResponse:
			if err := s.be.Flush(); err != nil {
				return err
			}
			if err := s.copyIn(up, what); err != nil {
				return err
			}
		}
	}
}

// copyIn forwards the client's COPY messages to the ancestor until the copy
// ends. Any other message ends it as well and is forwarded, so the ancestor
// answers it as it answers its own clients.
func (s *session) copyIn(up *ancestor, what string) error {
	for {
		msg, err := s.be.Receive()
		if err != nil {
			s.closeAncestor()
			return fmt.Errorf("%s: client went away during COPY: %w", what, err)
		}
		up.fe.Send(msg)
		if err := up.fe.Flush(); err != nil {
			s.closeAncestor()
			return fatalf("08006", "%s: connection to the upstream lost: %v", what, err)
		}
		switch msg.(type) {
		case *pgproto3.CopyData, *pgproto3.Flush, *pgproto3.Sync:
		default:
			return nil
		}
	}
}

func (s *session) flushWithDeadline() error {
	s.conn.SetWriteDeadline(time.Now().Add(s.srv.cfg.SenderTimeout))
	err := s.be.Flush()
	s.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		return errors.Join(errors.New("client went away"), err)
	}
	return nil
}

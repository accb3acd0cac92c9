package relay

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// baseBackup passes BASE_BACKUP through, verbatim, to the relay's parent.
// A parent that is itself a relay does the same, so the command reaches the
// nearest ancestor that is a PostgreSQL server; the WAL part of
// `pg_basebackup -X stream` is served by this relay from its own store.
func (s *session) baseBackup(cmd Command) error {
	var conninfo string
	if f := s.srv.cfg.UpstreamConnString; f != nil {
		conninfo = f()
	}
	if conninfo == "" {
		return errorf("0A000", "BASE_BACKUP is not available on this relay: take the base backup from the primary or a standby (pg_basebackup -h PRIMARY), then point primary_conninfo at the relay")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(conninfo)
	if err != nil {
		return fmt.Errorf("upstream connection string: %w", err)
	}
	cfg.RuntimeParams["replication"] = "true"
	cfg.RuntimeParams["application_name"] = s.srv.cfg.NodeID + "_basebackup"
	up, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return errorf("08006", "BASE_BACKUP: cannot reach this relay's upstream to pass the command through: %v", err)
	}
	defer up.Close(context.Background())
	// Never hand out a backup of another cluster than the WAL we serve.
	res, err := up.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil || len(res) == 0 || len(res[0].Rows) == 0 {
		return errorf("08006", "BASE_BACKUP: IDENTIFY_SYSTEM on the upstream failed: %v", err)
	}
	id, _ := s.srv.cfg.Source.Identity()
	if got := string(res[0].Rows[0][0]); got != fmt.Sprint(id.SystemID) {
		return errorf("XX000", "BASE_BACKUP: the upstream has system identifier %s, this relay serves %d", got, id.SystemID)
	}
	hc, err := up.Hijack()
	if err != nil {
		return err
	}
	defer hc.Conn.Close()
	s.log.Info("passing BASE_BACKUP through to the upstream", "query", cmd.Raw)
	hc.Frontend.Send(&pgproto3.Query{String: cmd.Raw})
	if err := hc.Frontend.Flush(); err != nil {
		return fmt.Errorf("BASE_BACKUP to upstream: %w", err)
	}
	// Relay everything up to the upstream's ReadyForQuery, which ends the
	// command for the client too.
	for {
		hc.Conn.SetReadDeadline(time.Now().Add(s.srv.cfg.SenderTimeout))
		msg, err := hc.Frontend.Receive()
		if err != nil {
			// The client's stream is mid-copy: a FATAL is all it can take.
			return fatalf("08006", "BASE_BACKUP: connection to the upstream lost: %v", err)
		}
		s.be.Send(msg)
		switch msg.(type) {
		case *pgproto3.ReadyForQuery:
			return s.be.Flush()
		case *pgproto3.CopyData:
			if err := s.flushWithDeadline(); err != nil {
				return err
			}
		}
	}
}

func (s *session) flushWithDeadline() error {
	s.conn.SetWriteDeadline(time.Now().Add(s.srv.cfg.SenderTimeout))
	err := s.be.Flush()
	if err != nil {
		return errors.Join(errors.New("BASE_BACKUP: client went away"), err)
	}
	return nil
}

package walstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// quoteIdent quotes a replication-protocol identifier ("" doubles a quote).
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func parseUint(s string) (uint64, error) { return strconv.ParseUint(s, 10, 64) }

// simpleQuery runs one command and returns its rows as text.
func simpleQuery(ctx context.Context, conn *pgconn.PgConn, sql string) ([][][]byte, error) {
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(results) == 0 {
		return nil, nil
	}
	return results[0].Rows, results[0].Err
}

// ensureSlot creates a physical slot that reserves WAL at once, accepting one
// that already exists (existed is then true).
func ensureSlot(ctx context.Context, conn *pgconn.PgConn, slot string) (existed bool, err error) {
	_, err = simpleQuery(ctx, conn, fmt.Sprintf("CREATE_REPLICATION_SLOT %s PHYSICAL RESERVE_WAL", quoteIdent(slot)))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("create replication slot %q: %w", slot, err)
	}
	return false, nil
}

// slotRestart is the restart_lsn and its timeline of a physical slot on the
// parent (READ_REPLICATION_SLOT, PostgreSQL 15 on, and relays); ok is false
// when the parent cannot say.
func slotRestart(ctx context.Context, conn *pgconn.PgConn, slot string) (lsn LSN, tli TimeLineID, ok bool) {
	rows, err := simpleQuery(ctx, conn, "READ_REPLICATION_SLOT "+quoteIdent(slot))
	if err != nil || len(rows) != 1 || len(rows[0]) != 3 || rows[0][1] == nil {
		return 0, 0, false
	}
	lsn, err = ParseLSN(string(rows[0][1]))
	if err != nil {
		return 0, 0, false
	}
	if rows[0][2] != nil {
		if t, err := parseUint(string(rows[0][2])); err == nil {
			tli = TimeLineID(t)
		}
	}
	return lsn, tli, true
}

// connectReplication opens a physical replication connection to connString
// with the given startup parameters (application_name only where the
// connection string sets none).
func connectReplication(ctx context.Context, connString, appName string, params map[string]string) (*pgconn.PgConn, error) {
	pc, err := pgconn.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	pc.RuntimeParams["replication"] = "true"
	if _, ok := pc.RuntimeParams["application_name"]; !ok {
		pc.RuntimeParams["application_name"] = appName
	}
	for k, v := range params {
		pc.RuntimeParams[k] = v
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(cctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// hijackCopy takes over an idle connection (every reply read, so nothing is
// buffered in pgconn) to read a CopyBoth stream straight from the socket.
// Cancelling ctx unblocks its reads. release closes the connection.
func hijackCopy(ctx context.Context, conn *pgconn.PgConn) (cc *copyConn, release func(), err error) {
	hc, err := conn.Hijack()
	if err != nil {
		return nil, nil, err
	}
	stop := context.AfterFunc(ctx, func() { hc.Conn.SetDeadline(time.Unix(1, 0)) })
	return newCopyConn(hc.Conn), func() { stop(); hc.Conn.Close() }, nil
}

package walstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
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
// that already exists.
func ensureSlot(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	_, err := simpleQuery(ctx, conn, fmt.Sprintf("CREATE_REPLICATION_SLOT %s PHYSICAL RESERVE_WAL", quoteIdent(slot)))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42710" {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create replication slot %q: %w", slot, err)
	}
	return nil
}

// startCopyBoth sends START_REPLICATION and waits for CopyBothResponse. On an
// error it also consumes the ReadyForQuery that follows, leaving the
// connection usable.
func startCopyBoth(ctx context.Context, conn *pgconn.PgConn, query string) error {
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: query})
	if err := fe.Flush(); err != nil {
		return err
	}
	var pgErr error
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			return err
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return nil
		case *pgproto3.ErrorResponse:
			pgErr = pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.ReadyForQuery:
			if pgErr == nil {
				pgErr = errors.New("server returned ReadyForQuery without starting replication")
			}
			return pgErr
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
		default:
			if pgErr != nil {
				return pgErr
			}
			return fmt.Errorf("unexpected message %T in response to START_REPLICATION", msg)
		}
	}
}

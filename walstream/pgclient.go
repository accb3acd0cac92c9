package walstream

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

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

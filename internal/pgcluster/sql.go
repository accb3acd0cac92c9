package pgcluster

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// Exec runs SQL (one or more statements, simple protocol).
func (c *Cluster) Exec(ctx context.Context, sql string, args ...any) error {
	conn, err := c.Connect(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if len(args) == 0 {
		_, err = conn.PgConn().Exec(ctx, sql).ReadAll()
	} else {
		_, err = conn.Exec(ctx, sql, args...)
	}
	if err != nil {
		return fmt.Errorf("cluster %s: %s: %w", c.Name, sql, err)
	}
	return nil
}

// QueryLSN runs a query that returns one pg_lsn and gives its byte value.
func (c *Cluster) QueryLSN(ctx context.Context, sql string) (uint64, error) {
	conn, err := c.Connect(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var text *string
	if err := conn.QueryRow(ctx, sql+"::text").Scan(&text); err != nil {
		return 0, fmt.Errorf("cluster %s: %s: %w", c.Name, sql, err)
	}
	if text == nil {
		return 0, nil
	}
	return ParseLSN(*text)
}

// ParseLSN parses "X/X".
func ParseLSN(s string) (uint64, error) {
	var hi, lo uint32
	if _, err := fmt.Sscanf(s, "%X/%X", &hi, &lo); err != nil {
		return 0, fmt.Errorf("invalid LSN %q: %w", s, err)
	}
	return uint64(hi)<<32 | uint64(lo), nil
}

// CurrentLSN is the flush position on a primary and the replay position on
// a standby.
func (c *Cluster) CurrentLSN(ctx context.Context) (uint64, error) {
	return c.QueryLSN(ctx, "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END")
}

// WaitReplayed waits until a standby has replayed target.
func (c *Cluster) WaitReplayed(ctx context.Context, target uint64) error {
	var last uint64
	for {
		lsn, err := c.QueryLSN(ctx, "SELECT pg_last_wal_replay_lsn()")
		if err == nil {
			last = lsn
			if lsn >= target {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster %s: replay at %s, waiting for %s: %w", c.Name, fmtLSN(last), fmtLSN(target), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func fmtLSN(l uint64) string { return fmt.Sprintf("%X/%X", uint32(l>>32), uint32(l)) }

// TableChecksum is an md5 over every row of table in a fixed order.
func (c *Cluster) TableChecksum(ctx context.Context, table string) (string, error) {
	conn, err := c.Connect(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var sum *string
	q := fmt.Sprintf("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM %s t", table)
	if err := conn.QueryRow(ctx, q).Scan(&sum); err != nil {
		return "", fmt.Errorf("cluster %s: checksum of %s: %w", c.Name, table, err)
	}
	if sum == nil {
		return "empty", nil
	}
	return *sum, nil
}

// PgbenchInit creates the pgbench tables.
func (c *Cluster) PgbenchInit(ctx context.Context, scale int) error {
	return c.run(ctx, "pgbench", "-i", "-s", strconv.Itoa(scale), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", "postgres")
}

// Pgbench runs the default TPC-B-like load for d.
func (c *Cluster) Pgbench(ctx context.Context, clients int, d time.Duration, extra ...string) error {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	args := []string{"-c", strconv.Itoa(clients), "-j", "2", "-T", strconv.Itoa(secs), "-n",
		"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres"}
	args = append(args, extra...)
	args = append(args, "postgres")
	return c.run(ctx, "pgbench", args...)
}

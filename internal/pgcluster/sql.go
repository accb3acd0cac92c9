package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Exec runs SQL: without args, one or more statements over the simple
// protocol; with args, one statement with parameters $1, $2...
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

// QueryLSN runs a query whose first column of its first row is a pg_lsn
// and returns that LSN as a number; NULL (a primary asked for its replay
// position, say) is 0. The query runs over the simple protocol, so results
// arrive as text whatever their type.
func (c *Cluster) QueryLSN(ctx context.Context, sql string) (uint64, error) {
	conn, err := c.Connect(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	res, err := conn.PgConn().Exec(ctx, sql).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("cluster %s: %s: %w", c.Name, sql, err)
	}
	if len(res) == 0 || len(res[0].Rows) == 0 || len(res[0].Rows[0]) == 0 {
		return 0, fmt.Errorf("cluster %s: %s: no LSN returned", c.Name, sql)
	}
	v := res[0].Rows[0][0]
	if v == nil {
		return 0, nil
	}
	lsn, err := ParseLSN(string(v))
	if err != nil {
		return 0, fmt.Errorf("cluster %s: %s: %w", c.Name, sql, err)
	}
	return lsn, nil
}

// ParseLSN parses PostgreSQL's "X/X" text form of an LSN.
func ParseLSN(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid LSN %q", s)
	}
	return h<<32 | l, nil
}

// FormatLSN gives the "X/X" form of an LSN.
func FormatLSN(lsn uint64) string { return fmt.Sprintf("%X/%X", uint32(lsn>>32), uint32(lsn)) }

// CurrentLSN is the flush position on a primary and the replay position on
// a standby.
func (c *Cluster) CurrentLSN(ctx context.Context) (uint64, error) {
	return c.QueryLSN(ctx, "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_flush_lsn() END")
}

// WaitReplayed polls a standby every 100 ms until pg_last_wal_replay_lsn()
// reaches target or ctx is done; the error gives the last position seen
// and the last query error, if any.
func (c *Cluster) WaitReplayed(ctx context.Context, target uint64) error {
	var last uint64
	var lastErr error
	for {
		lsn, err := c.QueryLSN(ctx, "SELECT pg_last_wal_replay_lsn()")
		if err == nil && lsn >= target {
			return nil
		}
		if err == nil {
			last = lsn
		} else {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("cluster %s: replay at %s, waiting for %s (last error: %v): %w",
					c.Name, FormatLSN(last), FormatLSN(target), lastErr, ctx.Err())
			}
			return fmt.Errorf("cluster %s: replay at %s, waiting for %s: %w", c.Name, FormatLSN(last), FormatLSN(target), ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TableChecksum is an md5 over the text of every row of table, in text
// order, so two clusters holding the same rows give the same value. An empty
// table gives "empty". table is SQL, not quoted.
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

// PgbenchInit creates the pgbench tables at scale (pgbench -i -q).
func (c *Cluster) PgbenchInit(ctx context.Context, scale int) error {
	return c.run(ctx, "pgbench", "-i", "-s", strconv.Itoa(scale), "-q", "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres", "postgres")
}

// Pgbench runs the default TPC-B-like load with clients connections for d,
// rounded to whole seconds and at least one (pgbench -T -n). extra goes
// before the database name.
func (c *Cluster) Pgbench(ctx context.Context, clients int, d time.Duration, extra ...string) error {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	threads := 2
	if clients%threads != 0 { // pgbench wants clients to be a multiple of threads
		threads = 1
	}
	args := []string{"-c", strconv.Itoa(clients), "-j", strconv.Itoa(threads), "-T", strconv.Itoa(secs), "-n",
		"-h", "127.0.0.1", "-p", strconv.Itoa(c.Port), "-U", "postgres"}
	args = append(args, extra...)
	args = append(args, "postgres")
	return c.run(ctx, "pgbench", args...)
}

// PgbenchTables are the tables `pgbench -i` creates.
var PgbenchTables = []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"}

// CompareTables checks that each of others holds the same rows as c in
// every table (TableChecksum). The error names every table and cluster
// that differs.
func (c *Cluster) CompareTables(ctx context.Context, tables []string, others ...*Cluster) error {
	var diffs []error
	for _, table := range tables {
		want, err := c.TableChecksum(ctx, table)
		if err != nil {
			return err
		}
		for _, o := range others {
			got, err := o.TableChecksum(ctx, table)
			if err != nil {
				return err
			}
			if got != want {
				diffs = append(diffs, fmt.Errorf("%s: %s checksum %s, %s has %s", o.Name, table, got, c.Name, want))
			}
		}
	}
	return errors.Join(diffs...)
}

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/spf13/cobra"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/topology"
)

// newRejoinCmd turns a former primary (fenced by a failover or switchover)
// into a standby of the new one, below a relay. It runs on the old
// primary's host, as the user that owns the data directory (or root).
func newRejoinCmd() *cobra.Command {
	var mgr, pgdata, binDir, conninfo, logFile, user string
	var promotable bool
	cmd := &cobra.Command{
		Use:   "rejoin NAME --pgdata DIR --conninfo 'SQL conninfo of NAME'",
		Short: "Turn a fenced former primary into a standby below a relay (pg_rewind when it diverged)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if pgdata == "" || conninfo == "" {
				return errors.New("--pgdata and --conninfo are required")
			}
			pc, err := pgconn.ParseConfig(conninfo)
			if err != nil {
				return fmt.Errorf("--conninfo: %w", err)
			}
			c, err := managerClient(mgr)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Minute)
			defer cancel()
			tr, err := fetchTree(ctx, c)
			if err != nil {
				return err
			}
			t := tr.Tree
			primary := t.Nodes[t.Primary]
			switch {
			case primary == nil:
				return errors.New("the managers have no primary")
			case t.Primary == name:
				return fmt.Errorf("%s is the committed primary: nothing to rejoin", name)
			}
			// Stream from a relay of the new primary when there is one; the
			// managers move the standby where placement wants it anyway.
			source := primary.Conninfo
			for _, child := range t.Children(t.Primary) {
				if n := t.Nodes[child]; n.Kind == topology.KindRelay && n.State == topology.StateAlive {
					source = n.Conninfo
					break
				}
			}
			upstream := topology.Endpoint(source)
			host, port, err := net.SplitHostPort(upstream)
			if err != nil {
				return fmt.Errorf("where to stream from (%q): %w", upstream, err)
			}
			primaryConninfo := fmt.Sprintf("host=%s port=%s application_name=%s", host, port, name)
			if user != "" {
				primaryConninfo += " user=" + user
			}
			if logFile == "" {
				logFile = filepath.Join(pgdata, "walrelay-rejoin.log")
			}
			cl, err := pgcluster.Open(name, binDir, pgdata, int(pc.Port), logFile)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "rewinding %s against %s (timeline %d), then streaming from %s\n", name, t.Primary, t.Timeline, upstream)
			if err := cl.Rejoin(ctx, primary.Conninfo, primaryConninfo, nil); err != nil {
				return err
			}
			if err := cl.Start(ctx); err != nil {
				return err
			}
			old := t.Nodes[name]
			cmdAdd := topology.Command{Op: topology.OpAddStandby, Name: name, Conninfo: conninfo, Promotable: promotable}
			if old != nil {
				cmdAdd.Zone, cmdAdd.Tier = old.Zone, old.Tier
			}
			epoch, err := c.Apply(ctx, cmdAdd)
			if err != nil {
				return fmt.Errorf("%s runs as a standby but could not be registered: %w", name, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s is a standby again (epoch %d)\n", name, epoch)
			return nil
		},
	}
	addManagerFlag(cmd, &mgr)
	fl := cmd.Flags()
	fl.StringVar(&pgdata, "pgdata", os.Getenv("PGDATA"), "the former primary's data directory")
	fl.StringVar(&binDir, "pg-bin", "", "PostgreSQL's bin directory (default: found via pg_config)")
	fl.StringVar(&conninfo, "conninfo", "", "SQL connection string of this node for the managers (its port is the server's)")
	fl.StringVar(&logFile, "log-file", "", "server log for pg_ctl (default: PGDATA/walrelay-rejoin.log)")
	fl.StringVar(&user, "replication-user", "", "user for primary_conninfo")
	fl.BoolVar(&promotable, "promotable", true, "register it as a failover candidate")
	return cmd
}

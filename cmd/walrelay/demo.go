package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/relay"
)

type demoFlags struct {
	duration time.Duration
	keep     bool
	standbys int
}

func newDemoCmd() *cobra.Command {
	var f demoFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a local demo tree: a primary, a relay and standbys streaming through it",
		Long: `Creates throwaway PostgreSQL clusters under a temporary directory: a primary,
one relay in this process and standbys whose primary_conninfo points at the
relay. Runs pgbench against the primary, prints the tree with each node's
LSN and lag as it converges, checks that the standbys' tables equal the
primary's, and removes everything on exit.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runDemo(ctx, cmd.OutOrStdout(), f)
		},
	}
	cmd.Flags().DurationVar(&f.duration, "duration", 15*time.Second, "how long to run the write load")
	cmd.Flags().IntVar(&f.standbys, "standbys", 2, "number of standbys behind the relay")
	cmd.Flags().BoolVar(&f.keep, "keep", false, "keep the temporary directory (logs, data) after exit")
	return cmd
}

func runDemo(ctx context.Context, out io.Writer, f demoFlags) error {
	bin, err := pgcluster.FindBinDir()
	if err != nil {
		if errors.Is(err, pgcluster.ErrNotInstalled) {
			fmt.Fprintln(out, "The demo needs the PostgreSQL server binaries (initdb, postgres, pg_basebackup, pgbench).")
			fmt.Fprintln(out, "On Debian or Ubuntu: sudo apt-get install -y postgresql")
			fmt.Fprintln(out, "Elsewhere install PostgreSQL 15 or newer, or set WALRELAY_PG_BIN to its bin directory.")
		}
		return err
	}
	base, err := os.MkdirTemp("", "walrelay-demo-")
	if err != nil {
		return err
	}
	if f.keep {
		fmt.Fprintf(out, "keeping %s\n", base)
	} else {
		defer os.RemoveAll(base)
	}
	logFile, err := os.Create(filepath.Join(base, "relay.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	log := slog.New(slog.NewTextHandler(logFile, nil))
	opts := func(name string) pgcluster.Options {
		return pgcluster.Options{BinDir: bin, BaseDir: base, Name: name, Logger: log}
	}
	// Clusters are stopped with a fresh context: the demo's may be cancelled.
	var clusters []*pgcluster.Cluster
	defer func() {
		for i := len(clusters) - 1; i >= 0; i-- {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			clusters[i].Stop(sctx)
			cancel()
		}
	}()

	fmt.Fprintf(out, "PostgreSQL binaries: %s\nworking directory:   %s\n\n", bin, base)
	step(out, "creating the primary")
	primary, err := pgcluster.InitPrimary(ctx, opts("primary"))
	if err != nil {
		return err
	}
	clusters = append(clusters, primary)
	if err := primary.Start(ctx); err != nil {
		return err
	}
	step(out, "pgbench -i on the primary")
	if err := primary.PgbenchInit(ctx, 1); err != nil {
		return err
	}

	step(out, "starting relay r1")
	port, err := pgcluster.FreePort()
	if err != nil {
		return err
	}
	// The relay runs with the defaults of `walrelay relay`, as parsed.
	var rf relayFlags
	if err := newRelayCmdWith(&rf).Flags().Parse([]string{"--node-id", "r1",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--upstream", primary.ReplicationConnString(),
		"--data-dir", filepath.Join(base, "relay-r1")}); err != nil {
		return err
	}
	node, err := newRelayNode(rf, log)
	if err != nil {
		return err
	}
	relayCtx, stopRelay := context.WithCancel(context.Background())
	relayDone := make(chan error, 1)
	go func() { relayDone <- node.Run(relayCtx) }()
	defer func() {
		stopRelay()
		<-relayDone
	}()
	if err := waitUntil(ctx, 30*time.Second, func() bool { return node.Status().DurableLSN != 0 }); err != nil {
		return fmt.Errorf("relay did not reach the primary: %w (log: %s)", err, logFile.Name())
	}

	relayConninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable application_name=%%s", port)
	var standbys []*pgcluster.Cluster
	for i := 1; i <= f.standbys; i++ {
		name := fmt.Sprintf("standby%d", i)
		step(out, "pg_basebackup "+name+" from the primary, primary_conninfo -> relay r1")
		sb, err := pgcluster.BaseBackup(ctx, primary, fmt.Sprintf(relayConninfo, name), opts(name))
		if err != nil {
			return err
		}
		clusters = append(clusters, sb)
		if err := sb.Start(ctx); err != nil {
			return err
		}
		standbys = append(standbys, sb)
	}

	step(out, fmt.Sprintf("running pgbench for %s", f.duration))
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(ctx, 4, f.duration) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for running := true; running; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-load:
			if err != nil {
				return err
			}
			running = false
		case <-tick.C:
			printTree(ctx, out, primary, node.Status(), standbys)
		}
	}
	step(out, "load finished; waiting for every standby to replay the primary's last LSN")
	target, err := primary.CurrentLSN(ctx)
	if err != nil {
		return err
	}
	for _, sb := range standbys {
		wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := sb.WaitReplayed(wctx, target)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", sb.Name, err)
		}
	}
	printTree(ctx, out, primary, node.Status(), standbys)
	if err := primary.CompareTables(ctx, pgcluster.PgbenchTables, standbys...); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nall %d standbys replayed %s through the relay; pgbench tables identical to the primary's\n",
		len(standbys), pgcluster.FormatLSN(target))
	return nil
}

func step(out io.Writer, msg string) { fmt.Fprintf(out, "==> %s\n", msg) }

func waitUntil(ctx context.Context, d time.Duration, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", d)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// printTree shows primary -> relay -> standbys with positions and lag. The
// primary is read last so that it is never shown behind its descendants.
func printTree(ctx context.Context, out io.Writer, primary *pgcluster.Cluster, rs relay.NodeStatus, standbys []*pgcluster.Cluster) {
	replays := make([]uint64, len(standbys))
	for i, sb := range standbys {
		replays[i], _ = sb.CurrentLSN(ctx)
	}
	pLSN, _ := primary.CurrentLSN(ctx)
	var b strings.Builder
	row := func(node, addr, lsn, lag string) { fmt.Fprintf(&b, "%-24s %-16s %-14s %s\n", node, addr, lsn, lag) }
	b.WriteString("\n")
	row("NODE", "ADDRESS", "LSN", "LAG BEHIND PRIMARY")
	row("primary", fmt.Sprintf(":%d", primary.Port), pgcluster.FormatLSN(pLSN), "-")
	row("└─ relay "+rs.NodeID, "", rs.DurableLSN.String(), fmtBytes(int64(pLSN)-int64(rs.DurableLSN)))
	byApp := map[string]relay.SessionStatus{}
	for _, d := range rs.Downstreams {
		byApp[d.ApplicationName] = d
	}
	for i, sb := range standbys {
		branch := "├─"
		if i == len(standbys)-1 {
			branch = "└─"
		}
		lag := fmtBytes(int64(pLSN) - int64(replays[i]))
		if d, ok := byApp[sb.Name]; ok {
			lag += fmt.Sprintf(", replay lag %.1f ms", d.ReplayLagSeconds*1000)
		} else {
			lag += " (not connected to the relay)"
		}
		row("   "+branch+" "+sb.Name, fmt.Sprintf(":%d", sb.Port), pgcluster.FormatLSN(replays[i]), lag)
	}
	fmt.Fprint(out, b.String())
}

func fmtBytes(n int64) string {
	if n < 0 {
		n = 0
	}
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%d B", n)
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/walrelay/walrelay/internal/feed"
	"github.com/walrelay/walrelay/walstream"
)

func newReplicasCmd() *cobra.Command {
	var (
		mgr, output, minLSN, waitLSN string
		maxLag                       []string
		q                            feed.Query
		timeout                      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "replicas",
		Short: "List the standbys that may serve a read now (the replica routing feed)",
		Long: `List the standbys that satisfy every condition given, best first (in
--prefer-zone, then least loaded, then least behind), with where to connect,
their replay position, lag in bytes and time, and how old those figures are.

With --wait-lsn X/Y, wait up to --timeout for the first standby that has
replayed X/Y and print it; exit non-zero if none does in time. A
read-your-writes read: commit, SELECT pg_current_wal_lsn(), then
  walrelay replicas --wait-lsn <that LSN> --timeout 2s
and read from the standby it prints (or from the primary on failure).

--manager may also name a relay's --http address: it answers for its own
children.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := managerClient(mgr)
			if err != nil {
				return err
			}
			v := map[string][]string{"max_lag": maxLag}
			if minLSN != "" {
				v["min_lsn"] = []string{minLSN}
			}
			parsed, err := feed.ParseQuery(v)
			if err != nil {
				return err
			}
			q.MaxLagTime, q.HasLagTime, q.MaxLagBytes, q.HasLagBytes, q.MinLSN = parsed.MaxLagTime, parsed.HasLagTime, parsed.MaxLagBytes, parsed.HasLagBytes, parsed.MinLSN
			if q.MaxAge == 0 {
				q.MaxAge = feed.DefaultMaxAge
			}
			wait := waitLSN != ""
			if wait {
				lsn, err := walstream.ParseLSN(waitLSN)
				if err != nil {
					return fmt.Errorf("--wait-lsn %q: want an LSN such as 0/3000060", waitLSN)
				}
				if timeout <= 0 || timeout > feed.MaxWait {
					return fmt.Errorf("--timeout %s: want a duration up to %s", timeout, feed.MaxWait)
				}
				q.MinLSN, q.Wait, q.Limit = max(q.MinLSN, lsn), timeout, 1
			}
			// The client shares a deadline among the members it may try:
			// each must get the whole wait.
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Duration(len(c.URLs))*(q.Wait+5*time.Second))
			defer cancel()
			resp, err := c.Replicas(ctx, q)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if wait {
				if len(resp.Replicas) == 0 {
					return fmt.Errorf("no standby replayed %s within %s", q.MinLSN, timeout)
				}
				if output == "json" {
					return writeIndented(out, resp.Replicas[0])
				}
				r := resp.Replicas[0]
				fmt.Fprintf(out, "%s host=%s port=%d replay_lsn=%s\n", r.Name, r.Host, r.Port, r.ReplayLSN)
				return nil
			}
			switch output {
			case "json":
				return writeIndented(out, resp)
			case "text":
				printReplicas(out, resp)
				return nil
			}
			return fmt.Errorf("--output %q: want text or json", output)
		},
	}
	fl := cmd.Flags()
	addManagerFlag(cmd, &mgr)
	fl.StringSliceVar(&maxLag, "max-lag", nil, "lag bound: a duration (100ms) or a size (16MB); repeat to bound both")
	fl.StringVar(&minLSN, "min-lsn", "", "only standbys that have replayed this LSN (X/Y)")
	fl.StringVar(&q.Tier, "tier", "", "only standbys of this tier")
	fl.StringVar(&q.Zone, "zone", "", "only standbys in this zone")
	fl.StringVar(&q.PreferZone, "prefer-zone", "", "list standbys in this zone first")
	fl.DurationVar(&q.MaxAge, "max-age", feed.DefaultMaxAge, "leave out standbys whose figures are older than this")
	fl.IntVar(&q.Limit, "limit", 0, "at most this many (0: all)")
	fl.StringVar(&waitLSN, "wait-lsn", "", "wait for the first standby that replays this LSN (X/Y) and print it")
	fl.DurationVar(&timeout, "timeout", 2*time.Second, "with --wait-lsn: how long to wait")
	fl.StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func writeIndented(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printReplicas(w io.Writer, resp *feed.Response) {
	if resp.PrimaryLSN != "" {
		fmt.Fprintf(w, "primary at %s (%.1fs ago)\n", resp.PrimaryLSN, resp.PrimaryAgeSeconds)
	}
	if len(resp.Replicas) == 0 {
		fmt.Fprintln(w, "no standby satisfies the conditions")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tHOST\tPORT\tZONE\tTIER\tREPLAY LSN\tLAG BYTES\tLAG\tAGE\tACTIVE\tSOURCE")
	for _, r := range resp.Replicas {
		port, active := "-", "-"
		if r.Port != 0 {
			port = strconv.Itoa(r.Port)
		}
		if r.ActiveSessions >= 0 {
			active = strconv.Itoa(r.ActiveSessions)
		}
		paused := ""
		if r.Paused {
			paused = " (paused)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s%s\t%d\t%.3fs\t%.3fs\t%s\t%s\n", r.Name, r.Host, port, dash(r.Zone), dash(r.Tier),
			r.ReplayLSN, paused, r.LagBytes, r.LagSeconds, r.AgeSeconds, active, r.Source)
	}
	tw.Flush()
}

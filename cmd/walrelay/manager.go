package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/walrelay/walrelay/topology"
)

func newManagerCmd() *cobra.Command {
	var cfg topology.ManagerConfig
	var join string
	var logLevel string
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run a topology manager (a member of the Raft cluster that owns the tree)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, "text")
			if err != nil {
				return err
			}
			cfg.Logger = log
			if join != "" {
				cfg.Join = splitURLs(join)
			}
			m, err := topology.NewManager(cfg)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return m.Run(ctx)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.NodeID, "node-id", "", "this manager's name (Raft server ID)")
	fl.StringVar(&cfg.RaftAddr, "raft-addr", "127.0.0.1:7001", "address for Raft traffic")
	fl.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:7101", "address for the API")
	fl.StringVar(&cfg.DataDir, "data-dir", "", "directory for the Raft log and snapshots")
	fl.BoolVar(&cfg.Bootstrap, "bootstrap", false, "form a new cluster with this member (first member only)")
	fl.StringVar(&join, "join", "", "API URL(s) of existing members to join, comma-separated")
	fl.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fl.DurationVar(&cfg.FailureTimeout, "failure-timeout", 5*time.Second, "mark a relay failed after this long without a heartbeat")
	fl.IntVar(&cfg.Policy.MaxChildren, "max-children", 8, "placement: most children per relay")
	fl.IntVar(&cfg.Policy.MaxDepth, "max-depth", 3, "placement: most relays between the primary and any node")
	cmd.MarkFlagRequired("node-id")
	cmd.MarkFlagRequired("data-dir")
	return cmd
}

func splitURLs(s string) []string {
	var out []string
	for _, u := range strings.Split(s, ",") {
		if u = strings.TrimSpace(u); u != "" {
			if !strings.Contains(u, "://") {
				u = "http://" + u
			}
			out = append(out, u)
		}
	}
	return out
}

// managerClient builds a client from --manager or WALRELAY_MANAGER.
func managerClient(flag string) (*topology.Client, error) {
	if flag == "" {
		flag = os.Getenv("WALRELAY_MANAGER")
	}
	urls := splitURLs(flag)
	if len(urls) == 0 {
		return nil, errors.New("no manager: pass --manager URL[,URL...] or set WALRELAY_MANAGER")
	}
	return &topology.Client{URLs: urls}, nil
}

func addManagerFlag(cmd *cobra.Command, dst *string) {
	cmd.Flags().StringVar(dst, "manager", "", "manager API URL(s), comma-separated (default $WALRELAY_MANAGER)")
}

func newTreeCmd() *cobra.Command {
	var mgr, output string
	cmd := &cobra.Command{
		Use:   "tree",
		Short: "Show the replication tree as the managers hold it",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := managerClient(mgr)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			tr, err := c.Tree(ctx)
			if err != nil {
				return err
			}
			if tr.Leader == "" {
				return fmt.Errorf("manager %s has no leader (commit index %d): the tree may be stale", tr.Member, tr.CommitIndex)
			}
			switch output {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(tr)
			case "text":
				printTopology(cmd.OutOrStdout(), tr)
				return nil
			default:
				return fmt.Errorf("--output %q: want text or json", output)
			}
		},
	}
	addManagerFlag(cmd, &mgr)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

// printTopology draws the tree with box-drawing branches, one node a line.
func printTopology(w io.Writer, tr *topology.TreeResponse) {
	t := tr.Tree
	fmt.Fprintf(w, "epoch %d, timeline %d, leader %s, served by %s at commit index %d\n\n",
		t.Epoch, t.Timeline, tr.Leader, tr.Member, tr.CommitIndex)
	fmt.Fprintf(w, "%-32s %-8s %-14s %s\n", "NODE", "ROLE", "ZONE/TIER", "STATE")
	var walk func(name, prefix string, last, root bool)
	walk = func(name, prefix string, last, root bool) {
		n := t.Nodes[name]
		branch, next := "", prefix
		if !root {
			branch = "├─ "
			next = prefix + "│  "
			if last {
				branch = "└─ "
				next = prefix + "   "
			}
		}
		zt := n.Zone
		if n.Tier != "" {
			zt += "/" + string(n.Tier)
		}
		fmt.Fprintf(w, "%-32s %-8s %-14s %s\n", prefix+branch+name, n.Kind, zt, n.State)
		kids := t.Children(name)
		for i, k := range kids {
			walk(k, next, i == len(kids)-1, false)
		}
	}
	if t.Primary != "" {
		walk(t.Primary, "", true, true)
	}
	for _, name := range t.Names() {
		n := t.Nodes[name]
		if name != t.Primary && (n.Parent == "" || t.Nodes[n.Parent] == nil) {
			walk(name, "", true, true) // unassigned
		}
	}
}

// applyCmd builds a subcommand that commits one Command.
func applyCmd(use, short string, args cobra.PositionalArgs, build func(args []string) (topology.Command, error), flags func(*cobra.Command)) *cobra.Command {
	var mgr string
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, a []string) error {
			c, err := managerClient(mgr)
			if err != nil {
				return err
			}
			command, err := build(a)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			epoch, err := c.Apply(ctx, command)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok, epoch %d\n", epoch)
			return nil
		},
	}
	addManagerFlag(cmd, &mgr)
	if flags != nil {
		flags(cmd)
	}
	return cmd
}

func newPrimaryCmd() *cobra.Command {
	var conninfo string
	var timeline uint32
	set := applyCmd("set NAME", "Register the primary", cobra.ExactArgs(1), func(a []string) (topology.Command, error) {
		return topology.Command{Op: topology.OpSetPrimary, Name: a[0], Conninfo: conninfo, Timeline: timeline}, nil
	}, func(c *cobra.Command) {
		c.Flags().StringVar(&conninfo, "conninfo", "", "libpq connection string of the primary")
		c.Flags().Uint32Var(&timeline, "timeline", 0, "the primary's timeline, if known")
	})
	cmd := &cobra.Command{Use: "primary", Short: "Manage the primary"}
	cmd.AddCommand(set)
	return cmd
}

func newStandbyCmd() *cobra.Command {
	var conninfo, zone, tier string
	var promotable bool
	add := applyCmd("add NAME", "Register an existing PostgreSQL standby", cobra.ExactArgs(1), func(a []string) (topology.Command, error) {
		switch tier {
		case "high", "default", "batch":
		default:
			return topology.Command{}, fmt.Errorf("--tier %q: want high, default or batch", tier)
		}
		return topology.Command{Op: topology.OpAddStandby, Name: a[0], Conninfo: conninfo, Zone: zone,
			Tier: topology.Tier(tier), Promotable: promotable}, nil
	}, func(c *cobra.Command) {
		c.Flags().StringVar(&conninfo, "conninfo", "", "libpq connection string of the standby (SQL)")
		c.Flags().StringVar(&zone, "zone", "", "zone, for placement")
		c.Flags().StringVar(&tier, "tier", "default", "high, default or batch")
		c.Flags().BoolVar(&promotable, "promotable", false, "a failover candidate")
	})
	remove := applyCmd("remove NAME", "Forget a standby", cobra.ExactArgs(1), func(a []string) (topology.Command, error) {
		return topology.Command{Op: topology.OpRemove, Name: a[0]}, nil
	}, nil)
	cmd := &cobra.Command{Use: "standby", Short: "Manage registered standbys"}
	cmd.AddCommand(add, remove)
	return cmd
}

func newMoveCmd() *cobra.Command {
	var to string
	return applyCmd("move NODE", "Pin a node under a parent (manual override of placement)", cobra.ExactArgs(1), func(a []string) (topology.Command, error) {
		if to == "" {
			return topology.Command{}, errors.New("--to PARENT is required")
		}
		return topology.Command{Op: topology.OpAssign, Name: a[0], Parent: to, Pinned: true}, nil
	}, func(c *cobra.Command) {
		c.Flags().StringVar(&to, "to", "", "the new parent")
	})
}

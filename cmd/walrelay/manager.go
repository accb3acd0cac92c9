package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/walrelay/walrelay/failover"
	"github.com/walrelay/walrelay/topology"
	"github.com/walrelay/walrelay/walstream"
)

func newManagerCmd() *cobra.Command {
	var cfg topology.ManagerConfig
	var fcfg failover.Config
	var promotion string
	var join string
	var configFile string
	var logLevel string
	cmd := &cobra.Command{
		Use:   "manager",
		Short: "Run a topology manager (a member of the Raft cluster that owns the tree)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(logLevel, "text", nil)
			if err != nil {
				return err
			}
			cfg.Logger = log
			if join != "" {
				cfg.Join = splitURLs(join)
			}
			mode, err := failover.ParseMode(promotion)
			if err != nil {
				return err
			}
			cfg.Metrics = prometheus.NewRegistry()
			cfg.Metrics.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
			m, err := topology.NewManager(cfg)
			if err != nil {
				return err
			}
			fcfg.Mode, fcfg.Logger = mode, log
			fo := failover.New(m, fcfg)
			fo.Register(m)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			go func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-hup:
						if err := m.ReloadTLS(); err != nil {
							log.Error("reload failed; keeping the current certificate", "err", err)
						} else {
							log.Info("reloaded the TLS certificate")
						}
					}
				}
			}()
			foCtx, stopFailover := context.WithCancel(ctx)
			foDone := make(chan struct{})
			go func() { defer close(foDone); fo.Run(foCtx, 500*time.Millisecond) }()
			defer func() { stopFailover(); <-foDone }()
			return m.Run(ctx)
		},
	}
	addConfigFlag(cmd, &configFile)
	fl := cmd.Flags()
	fl.StringVar(&cfg.NodeID, "node-id", "", "this manager's name (Raft server ID)")
	fl.StringVar(&cfg.RaftAddr, "raft-addr", "127.0.0.1:7001", "address for Raft traffic")
	fl.StringVar(&cfg.HTTPAddr, "http", "127.0.0.1:7101", "address for the API")
	fl.StringVar(&cfg.AdvertiseHTTP, "advertise-http", "", "host:port other members and clients use to reach the API (default: --http)")
	fl.StringVar(&cfg.DataDir, "data-dir", "", "directory for the Raft log and snapshots")
	fl.BoolVar(&cfg.Bootstrap, "bootstrap", false, "form a new cluster with this member (first member only)")
	fl.StringVar(&join, "join", "", "API URL(s) of existing members to join, comma-separated")
	fl.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fl.DurationVar(&cfg.FailureTimeout, "failure-timeout", 5*time.Second, "mark a relay failed after this long without a heartbeat")
	fl.DurationVar(&cfg.PositionInterval, "position-interval", topology.DefaultPositionInterval, "how often the leader reads standbys' replay positions for the replica feed")
	fl.IntVar(&cfg.Policy.MaxChildren, "max-children", 8, "placement: most children per relay")
	fl.IntVar(&cfg.Policy.MaxDepth, "max-depth", 3, "placement: most relays between the primary and any node")
	var tlsFiles topology.TLSFiles
	fl.StringVar(&tlsFiles.CertFile, "tls-cert", "", "PEM certificate: the API is served over HTTPS and Raft runs over mutual TLS")
	fl.StringVar(&tlsFiles.KeyFile, "tls-key", "", "PEM key of --tls-cert")
	fl.StringVar(&tlsFiles.CAFile, "tls-ca", "", "PEM CA bundle the other members' certificates must chain to")
	cmd.PreRunE = chainPreRun(cmd.PreRunE, func() error {
		if tlsFiles != (topology.TLSFiles{}) {
			cfg.TLS = &tlsFiles
		}
		return nil
	})
	fl.StringVar(&promotion, "promotion", "auto", "when the primary fails: auto (promote the best candidate), external (follow a promotion done elsewhere) or off")
	fl.DurationVar(&fcfg.PrimaryFailureTimeout, "primary-failure-timeout", 3*time.Second, "the primary counts as down after this long without answering the managers (and with the first-tier relays' streams lost)")
	fl.DurationVar(&fcfg.CatchupTimeout, "catchup-timeout", 10*time.Second, "longest wait for the candidate to receive what the relay tier holds before promotion")
	fl.Func("patroni-url", "REST API URL(s) of the Patroni members of the primary side, comma-separated: the managers follow the leader GET /cluster names (with --promotion external), and poll the candidates when none answers", func(s string) error {
		fcfg.PatroniURLs = splitURLs(s)
		return nil
	})
	fl.StringVar(&fcfg.PatroniDCS, "patroni-dcs", "", "Patroni's etcd v3 with namespace and scope, http://ETCD:2379/service/SCOPE: the leader and members are read there when no --patroni-url answers (or without one)")
	fl.StringVar(&fcfg.FenceCommand, "fence-command", "", "shell command run with the old primary's name as $1 once a new primary is committed (e.g. STONITH)")
	cmd.MarkFlagRequired("node-id")
	cmd.MarkFlagRequired("data-dir")
	return cmd
}

// chainPreRun runs first, then next.
func chainPreRun(first func(*cobra.Command, []string) error, next func() error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if first != nil {
			if err := first(cmd, args); err != nil {
				return err
			}
		}
		return next()
	}
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

// managerClient builds a client from --manager or WALRELAY_MANAGER; https
// managers are verified against WALRELAY_MANAGER_CA (or the system roots).
func managerClient(flag string) (*topology.Client, error) {
	return managerClientCA(flag, os.Getenv("WALRELAY_MANAGER_CA"))
}

func managerClientCA(flag, ca string) (*topology.Client, error) {
	if flag == "" {
		flag = os.Getenv("WALRELAY_MANAGER")
	}
	urls := splitURLs(flag)
	if len(urls) == 0 {
		return nil, errors.New("no manager: pass --manager URL[,URL...] or set WALRELAY_MANAGER")
	}
	c := &topology.Client{URLs: urls}
	if ca != "" || strings.HasPrefix(urls[0], "https://") {
		hc, err := topology.HTTPClientTLS(ca)
		if err != nil {
			return nil, err
		}
		c.HTTP = hc
	}
	return c, nil
}

func addManagerFlag(cmd *cobra.Command, dst *string) {
	cmd.Flags().StringVar(dst, "manager", "", "manager API URL(s), comma-separated (default $WALRELAY_MANAGER)")
}

func newTreeCmd() *cobra.Command {
	var mgr, output string
	var watch bool
	var interval time.Duration
	cmd := &cobra.Command{
		Use:   "tree",
		Short: "Show the replication tree as the managers hold it, with positions and lag",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := managerClient(mgr)
			if err != nil {
				return err
			}
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			if !watch {
				return showTree(cmd.Context(), c, cmd.OutOrStdout(), output)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			for {
				var b strings.Builder
				if err := showTree(ctx, c, &b, output); err != nil {
					fmt.Fprintf(&b, "walrelay: %v\n", err)
				}
				if output == "text" {
					fmt.Fprint(cmd.OutOrStdout(), "\033[H\033[2J") // clear the terminal
					fmt.Fprintf(cmd.OutOrStdout(), "%s  (every %s, Ctrl-C to stop)\n", time.Now().Format(time.TimeOnly), interval)
				}
				fmt.Fprint(cmd.OutOrStdout(), b.String())
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(interval):
				}
			}
		},
	}
	addManagerFlag(cmd, &mgr)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	cmd.Flags().BoolVarP(&watch, "watch", "w", false, "refresh until interrupted")
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "refresh interval with --watch")
	return cmd
}

// fetchTree reads the tree and fails, for scripts, when the member that
// answered has no leader.
func fetchTree(ctx context.Context, c *topology.Client) (*topology.TreeResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tr, err := c.Tree(ctx)
	if err != nil {
		return nil, err
	}
	if tr.Leader == "" {
		return tr, fmt.Errorf("manager %s has no leader (commit index %d): the tree may be stale", tr.Member, tr.CommitIndex)
	}
	return tr, nil
}

func showTree(ctx context.Context, c *topology.Client, w io.Writer, output string) error {
	tr, err := fetchTree(ctx, c)
	if err != nil {
		return err
	}
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(tr)
	}
	printTopology(w, tr)
	return nil
}

func newStatusCmd() *cobra.Command {
	var mgr, output string
	cmd := &cobra.Command{
		Use:   "status NODE",
		Short: "Show one node's detail: assignment, positions, lag, link",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := managerClient(mgr)
			if err != nil {
				return err
			}
			tr, err := fetchTree(cmd.Context(), c)
			if err != nil {
				return err
			}
			n := tr.Tree.Nodes[args[0]]
			if n == nil {
				return fmt.Errorf("no node %q in the tree (epoch %d)", args[0], tr.Tree.Epoch)
			}
			var st *topology.NodeStatus
			if tr.Status != nil {
				if s, ok := tr.Status.Nodes[n.Name]; ok {
					st = &s
				}
			}
			switch output {
			case "json":
				shown := *n
				shown.Conninfo = topology.Redact(n.Conninfo)
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(struct {
					Node   topology.Node        `json:"node"`
					Status *topology.NodeStatus `json:"status,omitempty"`
					Epoch  uint64               `json:"epoch"`
				}{shown, st, tr.Tree.Epoch})
			case "text":
				printNodeStatus(cmd.OutOrStdout(), tr, n, st)
				return nil
			}
			return fmt.Errorf("--output %q: want text or json", output)
		},
	}
	addManagerFlag(cmd, &mgr)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}

func printNodeStatus(w io.Writer, tr *topology.TreeResponse, n *topology.Node, st *topology.NodeStatus) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("node", n.Name)
	row("role", string(n.Kind))
	row("conninfo", dash(topology.Redact(n.Conninfo)))
	zt := n.Zone
	if n.Tier != "" {
		zt += "/" + string(n.Tier)
	}
	row("zone/tier", dash(zt))
	row("state", string(n.State))
	if n.Kind != topology.KindPrimary {
		p := dash(n.Parent)
		if n.Pinned {
			p += " (pinned by walrelay move)"
		}
		row("assigned parent", p)
	}
	if n.Promotable {
		row("promotable", "yes")
	}
	row("children", dash(strings.Join(tr.Tree.Children(n.Name), ", ")))
	if st == nil {
		row("positions", "unknown (the leader has no report from this node yet)")
		tw.Flush()
		return
	}
	if st.Error != "" {
		row("error", st.Error)
	}
	row("timeline", dash(num(st.Timeline)))
	row("receive lsn", lsnCell(st.ReceiveLSN))
	row("replay lsn", lsnCell(st.ReplayLSN))
	primary := "unknown"
	if tr.Status.PrimaryLSN != 0 {
		primary = tr.Status.PrimaryLSN.String()
	}
	row("lag", fmt.Sprintf("%s, %s behind the primary (at %s)", lagBytes(st.LagBytes), lagTime(st.LagSeconds), primary))
	if n.Kind != topology.KindPrimary {
		up := dash(st.Upstream)
		if st.Streaming {
			up += ", streaming"
		} else {
			up += ", not streaming"
		}
		row("streams from", up)
		row("link", linkCell(n, *st, true))
	}
	if st.Slot != "" {
		row("slot", st.Slot)
	}
	row("figures age", fmt.Sprintf("%.1fs", st.AgeSeconds))
	tw.Flush()
}

func newMembersCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "members", Short: "List, add or remove managers"}
	var mgr, output string
	list := &cobra.Command{
		Use:   "list",
		Short: "List the managers in the Raft configuration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := managerClient(mgr)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 10*time.Second)
			defer cancel()
			mr, err := c.Members(ctx)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(mr)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tRAFT\tHTTP\tROLE")
			for _, m := range mr.Members {
				role := "follower"
				if m.Leader {
					role = "leader"
				}
				if !m.Voter {
					role += " (non-voter)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.ID, m.RaftAddr, dash(m.HTTP), role)
			}
			tw.Flush()
			if mr.Leader == "" {
				return errors.New("no leader")
			}
			return nil
		},
	}
	addManagerFlag(list, &mgr)
	list.Flags().StringVarP(&output, "output", "o", "text", "text or json")

	var addMgr, raftAddr, httpAddr string
	add := &cobra.Command{
		Use:   "add ID",
		Short: "Add a manager (started without --bootstrap or --join) to the cluster",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := managerClient(addMgr)
			if err != nil {
				return err
			}
			if raftAddr == "" || httpAddr == "" {
				return errors.New("--raft-addr and --http are required")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			if err := c.Join(ctx, topology.JoinRequest{ID: args[0], RaftAddr: raftAddr, HTTPAddr: splitURLs(httpAddr)[0]}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok, %s added\n", args[0])
			return nil
		},
	}
	addManagerFlag(add, &addMgr)
	add.Flags().StringVar(&raftAddr, "raft-addr", "", "the new member's Raft address")
	add.Flags().StringVar(&httpAddr, "http", "", "the new member's API address")

	var rmMgr string
	remove := &cobra.Command{
		Use:   "remove ID",
		Short: "Remove a manager from the cluster",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := managerClient(rmMgr)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 15*time.Second)
			defer cancel()
			if err := c.RemoveMember(ctx, args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok, %s removed\n", args[0])
			return nil
		},
	}
	addManagerFlag(remove, &rmMgr)
	cmd.AddCommand(list, add, remove)
	return cmd
}

// printTopology draws the tree with box-drawing branches, one node a line,
// with the positions and lag the leader last saw.
func printTopology(w io.Writer, tr *topology.TreeResponse) {
	t := tr.Tree
	primaryAt := "unknown"
	if tr.Status != nil && tr.Status.PrimaryLSN != 0 {
		primaryAt = tr.Status.PrimaryLSN.String()
	}
	fmt.Fprintf(w, "epoch %d, timeline %d, primary at %s, leader %s, served by %s at commit index %d\n\n",
		t.Epoch, t.Timeline, primaryAt, tr.Leader, tr.Member, tr.CommitIndex)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tHOST\tZONE/TIER\tSTATE\tTL\tRECEIVE\tREPLAY\tLAG\tLAG TIME\tLINK")
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
		var st topology.NodeStatus
		known := false
		if tr.Status != nil {
			st, known = tr.Status.Nodes[name]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", prefix+branch+name, n.Kind,
			dash(topology.Endpoint(n.Conninfo)), dash(zt), nodeState(n, st, known), dash(num(st.Timeline)),
			lsnCell(st.ReceiveLSN), lsnCell(st.ReplayLSN), lagBytes(st.LagBytes), lagTime(st.LagSeconds), linkCell(n, st, known))
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
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func num(v uint32) string {
	if v == 0 {
		return ""
	}
	return strconv.FormatUint(uint64(v), 10)
}

func lsnCell(l walstream.LSN) string {
	if l == 0 {
		return "-"
	}
	return l.String()
}

// nodeState is the managers' verdict, with what the node itself says when
// that differs from plain health: not streaming, or unreachable.
func nodeState(n *topology.Node, st topology.NodeStatus, known bool) string {
	s := string(n.State)
	if !known || n.State != topology.StateAlive {
		return s
	}
	switch {
	case st.Error != "":
		return s + ", unreachable"
	case n.Kind != topology.KindPrimary && !st.Streaming:
		return s + ", not streaming"
	}
	return s
}

func lagBytes(b *uint64) string {
	if b == nil {
		return "-"
	}
	v := float64(*b)
	for _, u := range []string{"B", "kB", "MB", "GB"} {
		if v < 1024 || u == "GB" {
			if u == "B" {
				return fmt.Sprintf("%d B", *b)
			}
			return fmt.Sprintf("%.1f %s", v, u)
		}
		v /= 1024
	}
	return ""
}

func lagTime(s *float64) string {
	if s == nil {
		return "-"
	}
	return fmt.Sprintf("%.1fs", *s)
}

// linkCell describes the node's incoming link: its compression and ratio
// for relays.
func linkCell(n *topology.Node, st topology.NodeStatus, known bool) string {
	if !known || n.Kind == topology.KindPrimary {
		return "-"
	}
	if st.Compression != "" && st.CompressionRatio > 0 {
		return fmt.Sprintf("%s %.1fx", st.Compression, st.CompressionRatio)
	}
	if n.Kind == topology.KindRelay && st.CompressionRatio > 0 {
		return "plain"
	}
	return "-"
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
	var conninfo, zone string
	var timeline uint32
	var external bool
	set := applyCmd("set NAME", "Register the primary", cobra.ExactArgs(1), func(a []string) (topology.Command, error) {
		return topology.Command{Op: topology.OpSetPrimary, Name: a[0], Conninfo: conninfo, Zone: zone, Timeline: timeline, External: external}, nil
	}, func(c *cobra.Command) {
		c.Flags().StringVar(&zone, "zone", "", "zone, for placement: relays in other zones are fed by relays (compressed links) rather than by the primary")
		c.Flags().StringVar(&conninfo, "conninfo", "", "libpq connection string of the primary")
		c.Flags().Uint32Var(&timeline, "timeline", 0, "the primary's timeline, if known")
		c.Flags().BoolVar(&external, "external", false, "a member of a cluster another HA manager (Patroni) runs: never placed or re-pointed once it is a standby")
	})
	cmd := &cobra.Command{Use: "primary", Short: "Manage the primary"}
	cmd.AddCommand(set)
	return cmd
}

func newStandbyCmd() *cobra.Command {
	var conninfo, zone, tier string
	var promotable, external bool
	add := applyCmd("add NAME", "Register an existing PostgreSQL standby", cobra.ExactArgs(1), func(a []string) (topology.Command, error) {
		switch tier {
		case "high", "default", "batch":
		default:
			return topology.Command{}, fmt.Errorf("--tier %q: want high, default or batch", tier)
		}
		return topology.Command{Op: topology.OpAddStandby, Name: a[0], Conninfo: conninfo, Zone: zone,
			Tier: topology.Tier(tier), Promotable: promotable, External: external}, nil
	}, func(c *cobra.Command) {
		c.Flags().StringVar(&conninfo, "conninfo", "", "libpq connection string of the standby (SQL)")
		c.Flags().StringVar(&zone, "zone", "", "zone, for placement")
		c.Flags().StringVar(&tier, "tier", "default", "high, default or batch")
		c.Flags().BoolVar(&promotable, "promotable", false, "a failover candidate")
		c.Flags().BoolVar(&external, "external", false, "a member of a cluster another HA manager (Patroni) runs: observed and followed when promoted, never placed or re-pointed")
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

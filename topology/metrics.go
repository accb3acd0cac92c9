package topology

import (
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// managerCollector exposes the member's Raft state and, on the leader, the
// tree's positions and lag, computed at scrape time.
type managerCollector struct {
	m                                  *Manager
	leader, commit, applied, epoch     *prometheus.Desc
	nodes, lagBytes, lagSeconds, ratio *prometheus.Desc
}

func newManagerCollector(m *Manager) *managerCollector {
	return &managerCollector{m: m,
		leader:     prometheus.NewDesc("walrelay_manager_leader", "1 on the member that leads the Raft cluster.", nil, nil),
		commit:     prometheus.NewDesc("walrelay_manager_raft_commit_index", "Raft commit index as this member knows it.", nil, nil),
		applied:    prometheus.NewDesc("walrelay_manager_raft_applied_index", "Raft index applied to this member's tree.", nil, nil),
		epoch:      prometheus.NewDesc("walrelay_tree_epoch", "Epoch of the tree (grows with every change).", nil, nil),
		nodes:      prometheus.NewDesc("walrelay_tree_nodes", "Nodes in the tree by kind and state.", []string{"kind", "state"}, nil),
		lagBytes:   prometheus.NewDesc("walrelay_node_lag_bytes", "WAL the primary has written that the node has not (leader only).", []string{"node", "kind"}, nil),
		lagSeconds: prometheus.NewDesc("walrelay_node_lag_seconds", "How long ago the primary first wrote WAL the node lacks (leader only).", []string{"node", "kind"}, nil),
		ratio:      prometheus.NewDesc("walrelay_node_link_compression_ratio", "WAL bytes per wire byte on a relay's incoming link (leader only).", []string{"node"}, nil),
	}
}

func (c *managerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.leader, c.commit, c.applied, c.epoch, c.nodes, c.lagBytes, c.lagSeconds, c.ratio} {
		ch <- d
	}
}

func (c *managerCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	leading := m.raft.State() == raft.Leader
	ch <- prometheus.MustNewConstMetric(c.leader, prometheus.GaugeValue, boolFloat(leading))
	ch <- prometheus.MustNewConstMetric(c.commit, prometheus.GaugeValue, float64(m.raft.CommitIndex()))
	ch <- prometheus.MustNewConstMetric(c.applied, prometheus.GaugeValue, float64(m.raft.AppliedIndex()))
	tree := m.fsm.Tree()
	ch <- prometheus.MustNewConstMetric(c.epoch, prometheus.GaugeValue, float64(tree.Epoch))
	counts := map[[2]string]int{}
	for _, n := range tree.Nodes {
		counts[[2]string{string(n.Kind), string(n.State)}]++
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(c.nodes, prometheus.GaugeValue, float64(v), k[0], k[1])
	}
	if !leading {
		return
	}
	for name, st := range m.localStatus().Nodes {
		n := tree.Nodes[name]
		if n == nil {
			continue
		}
		if st.LagBytes != nil {
			ch <- prometheus.MustNewConstMetric(c.lagBytes, prometheus.GaugeValue, float64(*st.LagBytes), name, string(n.Kind))
		}
		if st.LagSeconds != nil {
			ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, *st.LagSeconds, name, string(n.Kind))
		}
		if st.CompressionRatio > 0 {
			ch <- prometheus.MustNewConstMetric(c.ratio, prometheus.GaugeValue, st.CompressionRatio, name)
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

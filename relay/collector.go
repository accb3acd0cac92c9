package relay

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// stateCollector turns the relay's per-child and per-slot state into
// metrics at scrape time, so they never go stale and need no bookkeeping
// when children come and go.
type stateCollector struct {
	srv                         *Server
	lagBytes, lagSeconds        *prometheus.Desc
	slotRetained, slotActive    *prometheus.Desc
	slotInvalidated, streamings *prometheus.Desc
}

func newStateCollector(s *Server) *stateCollector {
	child := []string{"application_name", "pid"}
	return &stateCollector{
		srv: s,
		lagBytes: prometheus.NewDesc("walrelay_downstream_lag_bytes",
			"How far a streaming child's flush position is behind the relay's durable end.", child, nil),
		lagSeconds: prometheus.NewDesc("walrelay_downstream_replay_lag_seconds",
			"A streaming child's replay lag as it reports it (the walsender's replay_lag).", child, nil),
		streamings: prometheus.NewDesc("walrelay_downstream_streaming",
			"Children streaming now.", nil, nil),
		slotRetained: prometheus.NewDesc("walrelay_slot_retained_bytes",
			"WAL a relay-local slot holds back: the durable end minus its restart_lsn.", []string{"slot"}, nil),
		slotActive: prometheus.NewDesc("walrelay_slot_active",
			"1 while a client streams through the slot.", []string{"slot"}, nil),
		slotInvalidated: prometheus.NewDesc("walrelay_slot_invalidated",
			"1 when the slot lost its WAL to --max-retained-size.", []string{"slot"}, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.lagBytes, c.lagSeconds, c.streamings, c.slotRetained, c.slotActive, c.slotInvalidated} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	streaming := 0
	for _, s := range c.srv.Sessions() {
		if s.State != "streaming" {
			continue
		}
		streaming++
		labels := []string{s.ApplicationName, strconv.Itoa(int(s.PID))}
		ch <- prometheus.MustNewConstMetric(c.lagBytes, prometheus.GaugeValue, float64(s.LagBytes), labels...)
		ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, s.ReplayLagSeconds, labels...)
	}
	ch <- prometheus.MustNewConstMetric(c.streamings, prometheus.GaugeValue, float64(streaming))
	_, end := c.srv.cfg.Source.DurableEnd()
	for _, sl := range c.srv.Slots() {
		retained := 0.0
		if !sl.Invalidated && sl.RestartLSN != 0 && end > sl.RestartLSN {
			retained = float64(end - sl.RestartLSN)
		}
		ch <- prometheus.MustNewConstMetric(c.slotRetained, prometheus.GaugeValue, retained, sl.Name)
		ch <- prometheus.MustNewConstMetric(c.slotActive, prometheus.GaugeValue, b2f(sl.Active), sl.Name)
		ch <- prometheus.MustNewConstMetric(c.slotInvalidated, prometheus.GaugeValue, b2f(sl.Invalidated), sl.Name)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

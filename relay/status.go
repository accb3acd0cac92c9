package relay

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/walrelay/walrelay/walstream"
)

// NodeStatus is the JSON document served at /status: what a relay is
// streaming from, how far it is, and every downstream client.
type NodeStatus struct {
	NodeID      string                   `json:"node_id"`
	SystemID    string                   `json:"system_id"`
	SegmentSize uint64                   `json:"wal_segment_size"`
	Timeline    walstream.TimeLineID     `json:"timeline"`
	Upstream    walstream.UpstreamStatus `json:"upstream"`
	// UpstreamLSN is the parent's flush position as it last reported it.
	UpstreamLSN walstream.LSN `json:"upstream_lsn"`
	// ReceivedLSN and DurableLSN are equal: the relay acknowledges and
	// exposes only what is fsynced.
	ReceivedLSN walstream.LSN   `json:"received_lsn"`
	DurableLSN  walstream.LSN   `json:"durable_lsn"`
	OldestLSN   walstream.LSN   `json:"oldest_lsn"`
	Downstreams []SessionStatus `json:"downstreams"`
	Slots       []SlotStatus    `json:"slots"`
	// Time is when the positions were read.
	Time time.Time `json:"time"`
}

// UpstreamReporter is what the status page needs from the upstream client.
type UpstreamReporter interface {
	Status() walstream.UpstreamStatus
}

// Status assembles the node's status.
func (s *Server) Status(up UpstreamReporter) NodeStatus {
	src := s.cfg.Source
	id, _ := src.Identity()
	tli, durable := src.DurableEnd()
	now := time.Now().UTC() // when the positions were read, for lag measured from them
	st := NodeStatus{
		NodeID:      s.cfg.NodeID,
		SystemID:    strconv.FormatUint(id.SystemID, 10),
		SegmentSize: id.SegmentSize,
		Timeline:    tli,
		ReceivedLSN: durable,
		DurableLSN:  durable,
		Downstreams: s.Sessions(),
		Slots:       s.Slots(),
		Time:        now,
	}
	if oldest, ok := src.OldestLSN(tli); ok {
		st.OldestLSN = oldest
	}
	if up != nil {
		st.Upstream = up.Status()
		st.UpstreamLSN = st.Upstream.ServerWALEnd
	}
	return st
}

// StatusHandler serves Status as JSON.
func (s *Server) StatusHandler(up UpstreamReporter) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(s.Status(up))
	})
}

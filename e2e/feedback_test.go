package e2e

import (
	"context"
	"testing"
	"time"
)

// Hot standby feedback from a standby behind a relay reaches the primary's
// slot for that relay (so vacuum keeps rows the standby's queries need),
// unless the relay's --feedback-from policy leaves that standby out.
func TestHotStandbyFeedbackThroughRelay(t *testing.T) {
	requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	forwarding := startRelay(t, "fwd", primary.ReplicationConnString(), "--feedback-from", "all")
	filtering := startRelay(t, "flt", primary.ReplicationConnString(), "--feedback-from", "reporting")
	feedbackOn := map[string]string{"hot_standby_feedback": "on"}
	s1 := newStandbyWith(t, primary, "web", forwarding.Conninfo(), feedbackOn)
	s2 := newStandbyWith(t, primary, "analytics", filtering.Conninfo(), feedbackOn)
	waitStreaming(t, forwarding, 1, 30*time.Second)
	waitStreaming(t, filtering, 1, 30*time.Second)
	// Hold a snapshot open on each standby.
	c1, err := s1.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close(ctx)
	c2, err := s2.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(ctx)
	if _, err := c1.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pgbench_accounts"); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pgbench_accounts"); err != nil {
		t.Fatal(err)
	}
	if err := primary.Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	slotXmin := func(slot string) (*int64, error) {
		conn, err := primary.Connect(ctx)
		if err != nil {
			return nil, err
		}
		defer conn.Close(ctx)
		var x *int64
		err = conn.QueryRow(ctx, "SELECT xmin::text::bigint FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&x)
		return x, err
	}
	waitFor(t, 30*time.Second, "xmin on the forwarding relay's slot", func() (bool, error) {
		x, err := slotXmin("walrelay_fwd")
		return x != nil, err
	})
	x, err := slotXmin("walrelay_flt")
	if err != nil {
		t.Fatal(err)
	}
	if x != nil {
		t.Errorf("slot of the filtering relay holds xmin %d for a standby its policy leaves out", *x)
	}
}

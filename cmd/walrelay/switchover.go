package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/walrelay/walrelay/failover"
)

func newSwitchoverCmd() *cobra.Command {
	var mgr, to string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "switchover --to NAME",
		Short: "Planned change of primary with nothing lost: stop writes, let NAME catch up, promote it, fence the old primary",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if to == "" {
				return fmt.Errorf("--to NAME is required")
			}
			c, err := managerClient(mgr)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout+2*time.Minute)
			defer cancel()
			var resp failover.SwitchoverResponse
			if err := c.Post(ctx, "/v1/switchover", failover.SwitchoverRequest{To: to, Timeout: timeout.String()}, &resp); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %s is the primary on timeline %d; writes stopped on %s at %s (now fenced)\n",
				resp.Primary, resp.Timeline, resp.Fenced, resp.SwitchLSN)
			return nil
		},
	}
	addManagerFlag(cmd, &mgr)
	cmd.Flags().StringVar(&to, "to", "", "the registered standby to promote")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "longest wait for the standby to catch up (the old primary accepts writes again after it)")
	return cmd
}

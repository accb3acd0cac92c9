// Command walrelay is the relay tier of a PostgreSQL replication tree: one
// binary with subcommands for the relay, the demo and the tools.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "0.1.0-dev"

func main() {
	if err := newRootCmd().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "walrelay:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "walrelay",
		Short:         "Relay tier for PostgreSQL physical replication",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newRelayCmd(), newVersionCmd(), newDemoCmd(),
		newManagerCmd(), newTreeCmd(), newStatusCmd(), newMembersCmd(), newSwitchoverCmd(), newReplicasCmd(), newRejoinCmd(), newConfigCmd(), newPrimaryCmd(), newStandbyCmd(), newMoveCmd())
	return root
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "walrelay %s\n", version)
		},
	}
}

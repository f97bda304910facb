package cli

// Placeholders replaced by the device client work.

import "github.com/spf13/cobra"

func newDeviceCmd() *cobra.Command { return &cobra.Command{Use: "device", Hidden: true} }
func newBenchCmd() *cobra.Command  { return &cobra.Command{Use: "bench", Hidden: true} }

package cli

import "github.com/spf13/cobra"

func newServeCmd() *cobra.Command { return &cobra.Command{Use: "serve", Hidden: true} }
func newInfoCmd() *cobra.Command  { return &cobra.Command{Use: "info", Hidden: true} }

package cli

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/internal/server"
	"github.com/dpsd/dpsd/internal/store/sqlite"
)

func newBackupCmd() *cobra.Command {
	var dataDir, file string
	cmd := &cobra.Command{
		Use:   "backup",
		Short: "Write a consistent copy of a node's embedded database, while it runs",
		Long: `Write a consistent copy of the embedded (SQLite) database of a data directory
into a new file, while the node runs: the copy holds every write committed
before it started. Back up tls/ca.pem and tls/ca-key.pem of the data
directory too: devices and clients trust that CA. A node on PostgreSQL keeps
its data there: back it up with pg_dump.`,
		Example: "  dpsd backup --data-dir /var/lib/dpsd -f /backups/dpsd-$(date +%F).db",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := server.Backup(cmd.Context(), dataDir, file); err != nil {
				return err
			}
			res, err := server.CheckBackup(cmd.Context(), file)
			if err != nil {
				return fmt.Errorf("the backup was written but does not check: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Backed up %s into %s.\n", dataDir, file)
			return printCheck(cmd.OutOrStdout(), res)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr(envDataDir, defaultDataDir), "data directory of the node (DPSD_DATA_DIR)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "the backup file to write (must not exist)")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func newRestoreCmd() *cobra.Command {
	var dataDir, file string
	var checkOnly bool
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Check a backup and put it in place of a stopped node's database",
		Long: `Check a backup written by "dpsd backup" (SQLite's integrity check, a schema
this dpsd knows) and, unless --check-only, put it in place of the embedded
database of a stopped node's data directory. The database it replaces is
kept beside it as dpsd.db.before-restore.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			if checkOnly {
				res, err := server.CheckBackup(cmd.Context(), file)
				if err != nil {
					return err
				}
				fmt.Fprintf(w, "%s checks.\n", file)
				return printCheck(w, res)
			}
			res, err := server.Restore(cmd.Context(), dataDir, file)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "Restored %s into %s (the database it replaced is %s.before-restore).\n", file, dataDir, server.DatabaseFile)
			return printCheck(w, res)
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", envOr(envDataDir, defaultDataDir), "data directory of the stopped node (DPSD_DATA_DIR)")
	cmd.Flags().StringVarP(&file, "file", "f", "", "the backup file")
	cmd.Flags().BoolVar(&checkOnly, "check-only", false, "only check the backup")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

func printCheck(w io.Writer, res *sqlite.CheckResult) error {
	var counts []string
	for _, k := range slices.Sorted(maps.Keys(res.Records)) {
		counts = append(counts, fmt.Sprintf("%s %d", k, res.Records[k]))
	}
	_, err := fmt.Fprintf(w, "Schema version %d; records: %s\n", res.SchemaVersion, strings.Join(counts, ", "))
	return err
}

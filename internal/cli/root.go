package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Main runs the command line with args and returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRootCommand()
	setArgs(root, args)
	if err := root.ExecuteContext(ctx); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		fmt.Fprintln(os.Stderr, "Error:", err)
		return 1
	}
	return 0
}

// exitError ends the process with a code after the command already printed
// what went wrong.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// NewRootCommand builds the dpsd command tree.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "dpsd",
		Short: "Self-hosted device provisioning service, wire-compatible with Azure IoT Hub DPS",
		Long: `Self-hosted device provisioning service, wire-compatible with Azure IoT Hub DPS.

The client commands find the service with --data-dir (a local dpsd's data
directory, default ./dpsd-data) or --connection-string; these flags, --ca-file
and -o/--output may also be given before the command ("dpsd --data-dir d
enrollment list").`,
		Version:       version(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate("dpsd {{.Version}}\n")
	root.AddCommand(
		newServeCmd(),
		newInfoCmd(),
		newEnrollmentCmd(),
		newEnrollmentGroupCmd(),
		newRegistrationCmd(),
		newDoctorCmd(),
		newComputeDeviceKeyCmd(),
		newDeviceCmd(),
		newBenchCmd(),
		newFloorServeCmd(),
		newHubCmd(),
		newLinkedHubCmd(),
		newAllocationPolicyCmd(),
		newIssuingCACmd(),
		newWebhookSecretCmd(),
		newWebhookCmd(),
		newCertificateCmd(),
		newCertCmd(),
		newVersionCmd(),
		newBackupCmd(),
		newRestoreCmd(),
		newExportCmd(),
		newApplyCmd(),
	)
	refuseUnknownSubcommands(root)
	return root
}

// buildVersion and buildCommit, when set at link time (-ldflags "-X
// github.com/dpsd/dpsd/internal/cli.buildVersion=v1.2.3 -X ...buildCommit=abc"),
// name the release; scripts/release.sh sets them. Otherwise the toolchain's
// stamp is used.
var buildVersion, buildCommit string

// version is the module version and the VCS revision the binary was built
// from: as the release script set them, else as the Go toolchain stamped
// them.
func version() string {
	if buildVersion != "" {
		return fmt.Sprintf("%s (commit %s)", buildVersion, cmp.Or(buildCommit, "unknown"))
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown version)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, modified, when string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", modified"
			}
		case "vcs.time":
			when = ", " + s.Value
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	return fmt.Sprintf("%s (commit %s%s%s, %s)", v, rev, modified, when, bi.GoVersion)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version of dpsd (also --version)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "dpsd %s\n", version())
			return err
		},
	}
}

// refuseUnknownSubcommands makes every command that only groups others
// answer a word it does not know with an error (and suggestions), rather
// than cobra's help and exit status 0. Flags are not checked on a group:
// "dpsd enrollment shw --registration-id x" is an unknown command, not an
// unknown flag.
func refuseUnknownSubcommands(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		refuseUnknownSubcommands(c)
	}
	if !cmd.HasSubCommands() || cmd.Runnable() || !cmd.HasParent() {
		return
	}
	cmd.Args = cobra.ArbitraryArgs
	cmd.SuggestionsMinimumDistance = 2
	// A flag the group does not know is an error, unless a word before it
	// already named an unknown command: that is the better message.
	cmd.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		if args := cmd.Flags().Args(); len(args) > 0 {
			return unknownCommand(cmd, args[0])
		}
		return fmt.Errorf("%w\nRun '%s --help' for usage", err, cmd.CommandPath())
	})
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 {
			return cmd.Help()
		}
		return unknownCommand(cmd, args[0])
	}
}

// unknownCommand is the error for a word that names none of group's
// commands, with suggestions.
func unknownCommand(group *cobra.Command, word string) error {
	msg := fmt.Sprintf("unknown command %q for %q", word, group.CommandPath())
	if s := group.SuggestionsFor(word); len(s) > 0 {
		msg += "\n\nDid you mean this?\n\t" + strings.Join(s, "\n\t")
	}
	return fmt.Errorf("%s\nRun '%s --help' for usage", msg, group.CommandPath())
}

// globalFlags are the flags, each taking a value, that users may put
// before the command as well as after it.
var globalFlags = []string{"--data-dir", "--connection-string", "--ca-file", "--output", "-o", "--query"}

// setArgs gives root args with the global flags that come before the
// command moved after it, where the command's own flag set parses them
// ("dpsd --data-dir d enrollment list" is "dpsd enrollment list --data-dir d").
func setArgs(root *cobra.Command, args []string) {
	root.SetArgs(hoistGlobalFlags(args))
}

func hoistGlobalFlags(args []string) []string {
	var lead []string
	i := 0
	for i < len(args) {
		a := args[i]
		name, _, hasValue := strings.Cut(a, "=")
		if !slices.Contains(globalFlags, name) {
			break
		}
		lead = append(lead, a)
		i++
		if !hasValue && i < len(args) {
			lead = append(lead, args[i])
			i++
		}
	}
	if len(lead) == 0 || i == len(args) {
		return args
	}
	rest := args[i:]
	if rest[0] == "linked-hub" {
		// There --connection-string is the hub's; the service's is
		// --dps-connection-string.
		for j, a := range lead {
			if name, v, ok := strings.Cut(a, "="); name == "--connection-string" {
				lead[j] = "--dps-connection-string"
				if ok {
					lead[j] += "=" + v
				}
			}
		}
	}
	// Before a "--" that ends the flags, if any.
	if j := slices.Index(rest, "--"); j >= 0 {
		out := slices.Concat(rest[:j], lead, rest[j:])
		return out
	}
	return slices.Concat(rest, lead)
}

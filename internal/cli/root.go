package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

// Main runs the command line with args and returns the process exit code.
func Main(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRootCommand()
	root.SetArgs(args)
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
		Use:           "dpsd",
		Short:         "Self-hosted device provisioning service, wire-compatible with Azure IoT Hub DPS",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
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
		newHubCmd(),
		newLinkedHubCmd(),
		newAllocationPolicyCmd(),
		newWebhookSecretCmd(),
		newWebhookCmd(),
		newCertificateCmd(),
		newCertCmd(),
	)
	return root
}

package cli

// Placeholders replaced by the enrollment CLI work.

import "github.com/spf13/cobra"

func newEnrollmentCmd() *cobra.Command { return &cobra.Command{Use: "enrollment", Hidden: true} }
func newEnrollmentGroupCmd() *cobra.Command {
	return &cobra.Command{Use: "enrollment-group", Hidden: true}
}
func newRegistrationCmd() *cobra.Command { return &cobra.Command{Use: "registration", Hidden: true} }
func newComputeDeviceKeyCmd() *cobra.Command {
	return &cobra.Command{Use: "compute-device-key", Hidden: true}
}

package cli

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/dps"
)

func newRegistrationCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "registration",
		Short: "Show and delete device registration records",
		Args:  cobra.NoArgs,
	}
	cc := newClientCmd(cmd)
	cmd.AddCommand(registrationShowCmd(cc), registrationListCmd(cc), registrationDeleteCmd(cc))
	return cmd
}

func registrationShowCmd(cc *clientCmd) *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the registration record of a device",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&id, "registration-id", "", "registration ID of the device")
	_ = cmd.MarkFlagRequired("registration-id")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		r, err := c.GetRegistration(cmd.Context(), id)
		if err != nil {
			return err
		}
		return printRegistration(cmd.OutOrStdout(), asJSON, r)
	}
	return cmd
}

func registrationListCmd(cc *clientCmd) *cobra.Command {
	var groupID string
	var top int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the registration records of an enrollment group's devices",
		Args:  cobra.NoArgs,
	}
	groupIDFlag(cmd, &groupID)
	cmd.Flags().IntVar(&top, "top", 0, "list at most this many (0: all)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		list, err := collect(cmd.Context(), top,
			func(ctx context.Context, o service.QueryOptions) (*service.Page[dps.DeviceRegistrationState], error) {
				return c.QueryRegistrations(ctx, groupID, o)
			})
		if err != nil {
			return err
		}
		return printRegistrations(cmd.OutOrStdout(), asJSON, list)
	}
	return cmd
}

func registrationDeleteCmd(cc *clientCmd) *cobra.Command {
	var id, etag string
	cmd := &cobra.Command{
		Use:   "delete",
		Short: "Delete the registration record of a device (the device stays in its hub)",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().StringVar(&id, "registration-id", "", "registration ID of the device")
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the record still has this etag")
	_ = cmd.MarkFlagRequired("registration-id")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, err := cc.setup()
		if err != nil {
			return err
		}
		return c.DeleteRegistration(cmd.Context(), id, etag)
	}
	return cmd
}

package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/service"
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
	var withLog bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the registration record of a device",
		Long: `Show the registration record of a device. With --allocation-log, also show
why each allocation of the device chose its hub: the policy, the candidate hubs
with their weights and locations, the reason, and for a device that already had
a hub what reprovisioning did (moved or stayed, twin migrated or reset); for
custom allocations also the request sent to the webhook or policy (enrollment
without keys, webhook URL with its query string masked, device runtime context,
linked hubs), each attempt's status and answer, and the outcome. With -o json the answer is then
{"registration": <record>, "allocationLog": {"registrationId": ..., "entries": [...]}}.`,
		Args: cobra.NoArgs,
	}
	registrationIDFlag(cmd, &id)
	cmd.Flags().BoolVar(&withLog, "allocation-log", false, "also show the allocation log: why each allocation chose its hub (policy, candidates, reprovisioning), and custom allocations' webhook requests and answers")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		r, err := c.GetRegistration(cmd.Context(), id)
		if err != nil {
			return err
		}
		if !withLog {
			return printRegistration(cmd.OutOrStdout(), asJSON, r)
		}
		// The log lives in dpsd's extension API, which the Azure-shaped
		// methods do not cover.
		lg, err := fetchAllocationLog(cmd.Context(), extClient{c}, r.RegistrationID)
		if err != nil {
			return err
		}
		return printRegistrationWithLog(cmd, asJSON, r, lg)
	}
	return cmd
}

// printRegistrationWithLog prints a registration record followed by its
// allocation log; as JSON, both in one object so scripts parse one value.
func printRegistrationWithLog(cmd *cobra.Command, asJSON bool, r *dps.DeviceRegistrationState, lg *admin.AllocationLog) error {
	w := cmd.OutOrStdout()
	if asJSON {
		return writeJSON(w, struct {
			Registration  *dps.DeviceRegistrationState `json:"registration"`
			AllocationLog *admin.AllocationLog         `json:"allocationLog"`
		}{r, lg})
	}
	if err := printRegistration(w, false, r); err != nil {
		return err
	}
	if _, err := fmt.Fprintln(w, "\nAllocation log:"); err != nil {
		return err
	}
	return printAllocationLog(w, false, lg)
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
	registrationIDFlag(cmd, &id)
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the record still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, err := cc.setup()
		if err != nil {
			return err
		}
		return c.DeleteRegistration(cmd.Context(), id, etag)
	}
	return cmd
}

package cli

import (
	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/dps"
)

func newEnrollmentGroupCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "enrollment-group",
		Short: "Manage enrollment groups",
		Args:  cobra.NoArgs,
	}
	cc := newClientCmd(cmd)
	cmd.AddCommand(
		groupCreateCmd(cc),
		groupShowCmd(cc),
		groupListCmd(cc),
		groupUpdateCmd(cc),
		groupDeleteCmd(cc),
	)
	return cmd
}

func groupIDFlag(cmd *cobra.Command, id *string) {
	cmd.Flags().StringVar(id, "enrollment-group-id", "", "ID of the enrollment group")
	_ = cmd.MarkFlagRequired("enrollment-group-id")
}

func groupCreateCmd(cc *clientCmd) *cobra.Command {
	var id string
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create an enrollment group",
		Args:  cobra.NoArgs,
	}
	groupIDFlag(cmd, &id)
	ef := addEnrollmentFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		g := &dps.EnrollmentGroup{EnrollmentGroupID: id}
		if err := ef.applyGroup(g); err != nil {
			return err
		}
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		out, err := c.CreateEnrollmentGroup(cmd.Context(), g)
		if err != nil {
			return err
		}
		return printEnrollmentGroup(cmd.OutOrStdout(), asJSON, out)
	}
	return cmd
}

func groupShowCmd(cc *clientCmd) *cobra.Command {
	var id string
	var showKeys bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show an enrollment group",
		Args:  cobra.NoArgs,
	}
	groupIDFlag(cmd, &id)
	cmd.Flags().BoolVar(&showKeys, "show-keys", false, "include the symmetric keys")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		g, err := c.GetEnrollmentGroup(cmd.Context(), id)
		if err != nil {
			return err
		}
		if showKeys {
			if g.Attestation, err = c.GetEnrollmentGroupAttestation(cmd.Context(), id); err != nil {
				return err
			}
		}
		return printEnrollmentGroup(cmd.OutOrStdout(), asJSON, g)
	}
	return cmd
}

func groupListCmd(cc *clientCmd) *cobra.Command {
	var top int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List enrollment groups",
		Args:  cobra.NoArgs,
	}
	cmd.Flags().IntVar(&top, "top", 0, "list at most this many (0: all)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		list, err := collect(cmd.Context(), top, c.QueryEnrollmentGroups)
		if err != nil {
			return err
		}
		return printEnrollmentGroups(cmd.OutOrStdout(), asJSON, list)
	}
	return cmd
}

func groupUpdateCmd(cc *clientCmd) *cobra.Command {
	var id, etag string
	cmd := &cobra.Command{
		Use:   "update",
		Short: "Update an enrollment group (only the given settings change)",
		Args:  cobra.NoArgs,
	}
	groupIDFlag(cmd, &id)
	cmd.Flags().StringVar(&etag, "etag", "", "update only if the group still has this etag (default: overwrite)")
	ef := addEnrollmentFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		g, err := c.GetEnrollmentGroup(ctx, id)
		if err != nil {
			return err
		}
		// GET leaves the keys out; put them back so the update keeps them.
		if g.Attestation, err = c.GetEnrollmentGroupAttestation(ctx, id); err != nil {
			return err
		}
		if err := ef.applyGroup(g); err != nil {
			return err
		}
		g.ETag = etag
		out, err := c.UpdateEnrollmentGroup(ctx, g)
		if err != nil {
			return err
		}
		return printEnrollmentGroup(cmd.OutOrStdout(), asJSON, out)
	}
	return cmd
}

func groupDeleteCmd(cc *clientCmd) *cobra.Command {
	var id, etag string
	cmd := &cobra.Command{
		Use:   "delete",
		Short: "Delete an enrollment group (its registration records stay)",
		Args:  cobra.NoArgs,
	}
	groupIDFlag(cmd, &id)
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the group still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, err := cc.setup()
		if err != nil {
			return err
		}
		return c.DeleteEnrollmentGroup(cmd.Context(), id, etag)
	}
	return cmd
}

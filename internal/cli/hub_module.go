package cli

import (
	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
)

// hubModuleIdentityCmd is "dpsd hub module-identity", as az iot hub
// module-identity.
func hubModuleIdentityCmd(cc *clientCmd) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "module-identity",
		Short: "Manage the module identities of a built-in hub's devices (as az iot hub module-identity)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(hubModuleCreateCmd(cc), hubModuleShowCmd(cc), hubModuleListCmd(cc), hubModuleDeleteCmd(cc))
	return cmd
}

func hubModuleIDFlag(cmd *cobra.Command, id *string) {
	cmd.Flags().StringVarP(id, "module-id", "m", "", "module ID")
	_ = cmd.MarkFlagRequired("module-id")
}

func hubModuleCreateCmd(cc *clientCmd) *cobra.Command {
	var name, dev, mod string
	var auth deviceAuthFlags
	cmd := &cobra.Command{
		Use:     "create",
		Short:   "Create a module identity on a device",
		Example: `  dpsd hub module-identity create -n contoso-toasters-hub-1098 -d toaster-42 -m thermostat`,
		Args:    cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &dev)
	hubModuleIDFlag(cmd, &mod)
	auth.add(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		a, err := auth.authentication()
		if err != nil {
			return err
		}
		hc, _, asJSON, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		out, err := hc.CreateModule(cmd.Context(), &azurehub.Module{DeviceID: dev, ModuleID: mod, Authentication: a})
		if err != nil {
			return err
		}
		return printModule(cmd, out, asJSON)
	}
	return cmd
}

func printModule(cmd *cobra.Command, m *azurehub.Module, asJSON bool) error {
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), m)
	}
	fields := []field{{"Device ID", m.DeviceID}, {"Module ID", m.ModuleID}, {"ETag", m.ETag}}
	if m.ManagedBy != "" {
		fields = append(fields, field{"Managed by", m.ManagedBy})
	}
	if a := m.Authentication; a != nil {
		fields = append(fields, field{"Authentication", a.Type})
		if k := a.SymmetricKey; k != nil {
			fields = append(fields, field{"Primary key", k.PrimaryKey}, field{"Secondary key", k.SecondaryKey})
		}
	}
	return details(cmd.OutOrStdout(), fields)
}

func hubModuleShowCmd(cc *clientCmd) *cobra.Command {
	var name, dev, mod string
	cmd := &cobra.Command{Use: "show", Short: "Show a module identity (with its keys)", Args: cobra.NoArgs}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &dev)
	hubModuleIDFlag(cmd, &mod)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		hc, _, asJSON, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		m, err := hc.GetModule(cmd.Context(), dev, mod)
		if err != nil {
			return err
		}
		return printModule(cmd, m, asJSON)
	}
	return cmd
}

func hubModuleListCmd(cc *clientCmd) *cobra.Command {
	var name, dev string
	cmd := &cobra.Command{Use: "list", Short: "List a device's module identities", Args: cobra.NoArgs}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &dev)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		hc, _, asJSON, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		mods, err := hc.ListModules(cmd.Context(), dev)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), nonNil(mods))
		}
		rows := make([][]string, 0, len(mods))
		for _, m := range mods {
			auth := ""
			if m.Authentication != nil {
				auth = m.Authentication.Type
			}
			rows = append(rows, []string{m.ModuleID, m.ConnectionState, auth, m.LastActivityTime})
		}
		return table(cmd.OutOrStdout(), []string{"MODULE ID", "CONNECTION", "AUTH", "LAST ACTIVITY"}, rows)
	}
	return cmd
}

func hubModuleDeleteCmd(cc *clientCmd) *cobra.Command {
	var name, dev, mod, etag string
	cmd := &cobra.Command{Use: "delete", Short: "Delete a module identity with its twin", Args: cobra.NoArgs}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &dev)
	hubModuleIDFlag(cmd, &mod)
	cmd.Flags().StringVar(&etag, "etag", "", "only if the module still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		hc, _, _, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		return hc.DeleteModule(cmd.Context(), dev, mod, etag)
	}
	return cmd
}

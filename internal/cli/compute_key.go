package cli

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/internal/sas"
)

func newComputeDeviceKeyCmd() *cobra.Command {
	cmd := computeDeviceKeyCmd()
	flagAliases(cmd, map[string]string{"rid": "registration-id", "enrollment-id": "enrollment-group-id", "eid": "enrollment-group-id"})
	return cmd
}

// groupComputeKeyCmd is az's spelling, "enrollment-group compute-device-key".
func groupComputeKeyCmd() *cobra.Command {
	cmd := computeDeviceKeyCmd()
	cmd.Example = "  dpsd enrollment-group compute-device-key --eid contoso-custom-allocated-devices --rid breakroom499-contoso-tstrsd-007"
	return cmd
}

func computeDeviceKeyCmd() *cobra.Command {
	var key, regID, groupID string
	cmd := &cobra.Command{
		Use:   "compute-device-key",
		Short: "Derive a device's key from its symmetric-key enrollment group's key",
		Long: "Derive the key a member of a symmetric-key enrollment group signs with:\n" +
			"base64(HMAC-SHA256(base64decode(group key), registration ID)).\n" +
			"The group key is given with --key, or read from the service with --enrollment-group-id.",
		Example: "  dpsd compute-device-key --key <group primary key> --registration-id breakroom499-contoso-tstrsd-007",
		Args:    cobra.NoArgs,
	}
	cmd.Flags().StringVar(&key, "key", "", "the enrollment group's symmetric key (base64)")
	cmd.Flags().StringVar(&groupID, "enrollment-group-id", "", "read the primary key of this enrollment group from the service instead of --key")
	cmd.Flags().StringVar(&regID, "registration-id", "", "registration ID of the device")
	_ = cmd.MarkFlagRequired("registration-id")
	cc := newClientCmd(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		asJSON, err := cc.out.json()
		if err != nil {
			return err
		}
		switch {
		case key != "" && groupID != "":
			return errors.New("give --key or --enrollment-group-id, not both")
		case key == "" && groupID == "":
			return errors.New("give the group key with --key, or --enrollment-group-id to read it from the service")
		case key == "":
			c, err := cc.conn.client()
			if err != nil {
				return err
			}
			a, err := c.GetEnrollmentGroupAttestation(cmd.Context(), groupID)
			if err != nil {
				return err
			}
			if a.Type != dps.AttestationSymmetricKey || a.SymmetricKey == nil || a.SymmetricKey.PrimaryKey == "" {
				return fmt.Errorf("enrollment group %q has no symmetric key (attestation %s)", groupID, a.Type)
			}
			key = a.SymmetricKey.PrimaryKey
		}
		derived, err := sas.DeriveDeviceKey(key, regID)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), derived)
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), derived)
		return err
	}
	return cmd
}

package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/internal/hub/builtinhub"
)

// hubCertificateCmd is "dpsd hub certificate", as az iot hub certificate:
// the CA certificates a built-in hub trusts for devices that authenticate
// with CA-signed certificates. Its flags are az's: --hub-name, and -n for
// the certificate's name.
func hubCertificateCmd(cc *clientCmd) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certificate",
		Short: "Manage the CA certificates of a built-in hub (as az iot hub certificate)",
		Long: `A built-in hub trusts a CA certificate for devices with CA-signed (x509_ca)
certificates once it is uploaded and verified: either uploaded with
--verified, or proven by a certificate that the CA signed with the
verification code as its subject CN (generate-verification-code, then
verify). Devices that the provisioning service registered through a group
or enrollment whose CA vouched for them connect through that CA without it
being uploaded, each device alone.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(hubCertCreateCmd(cc), hubCertListCmd(cc), hubCertShowCmd(cc), hubCertDeleteCmd(cc),
		hubCertCodeCmd(cc), hubCertVerifyCmd(cc))
	return cmd
}

func certHubFlag(cmd *cobra.Command, hub *string) {
	cmd.Flags().StringVar(hub, "hub-name", "", "name of the built-in hub")
	_ = cmd.MarkFlagRequired("hub-name")
}

func certNameFlag(cmd *cobra.Command, name *string) {
	cmd.Flags().StringVarP(name, "name", "n", "", "name of the certificate")
	_ = cmd.MarkFlagRequired("name")
}

func readPEMFile(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--path: %w", err)
	}
	return string(data), nil
}

func printCACert(cmd *cobra.Command, c *builtinhub.CACertificate, asJSON bool) error {
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), c)
	}
	fields := []field{{"Name", c.Name}, {"Subject", c.Subject}, {"Thumbprint", c.Thumbprint},
		{"Verified", fmt.Sprint(c.IsVerified)}, {"Origin", c.Origin}, {"Expiry", c.Expiry.UTC().Format("2006-01-02T15:04:05Z")}, {"ETag", c.ETag}}
	if c.VerificationCode != "" {
		fields = append(fields, field{"Verification code", c.VerificationCode})
	}
	return details(cmd.OutOrStdout(), fields)
}

func hubCertCreateCmd(cc *clientCmd) *cobra.Command {
	var hub, name, path string
	var verified bool
	cmd := &cobra.Command{
		Use:     "create",
		Short:   "Upload a CA certificate (PEM)",
		Example: `  dpsd hub certificate create --hub-name contoso-toasters-hub-1098 -n toaster-ca --path ca.pem`,
		Args:    cobra.NoArgs,
	}
	certHubFlag(cmd, &hub)
	certNameFlag(cmd, &name)
	cmd.Flags().StringVarP(&path, "path", "p", "", "PEM file of the CA certificate")
	_ = cmd.MarkFlagRequired("path")
	cmd.Flags().BoolVar(&verified, "verified", false, "trust it at once, without proof of possession")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		certPEM, err := readPEMFile(path)
		if err != nil {
			return err
		}
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		out, err := c.UploadCACertificate(cmd.Context(), hub, name, certPEM, verified)
		if err != nil {
			return err
		}
		return printCACert(cmd, out, asJSON)
	}
	return cmd
}

func hubCertListCmd(cc *clientCmd) *cobra.Command {
	var hub string
	cmd := &cobra.Command{Use: "list", Short: "List a hub's CA certificates", Args: cobra.NoArgs}
	certHubFlag(cmd, &hub)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		list, err := c.CACertificates(cmd.Context(), hub)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), nonNil(list))
		}
		rows := make([][]string, 0, len(list))
		for _, x := range list {
			rows = append(rows, []string{x.Name, x.Subject, fmt.Sprint(x.IsVerified), x.Origin, x.Expiry.UTC().Format("2006-01-02")})
		}
		return table(cmd.OutOrStdout(), []string{"NAME", "SUBJECT", "VERIFIED", "ORIGIN", "EXPIRY"}, rows)
	}
	return cmd
}

func hubCertShowCmd(cc *clientCmd) *cobra.Command {
	var hub, name string
	cmd := &cobra.Command{Use: "show", Short: "Show a CA certificate", Args: cobra.NoArgs}
	certHubFlag(cmd, &hub)
	certNameFlag(cmd, &name)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		out, err := c.CACertificate(cmd.Context(), hub, name)
		if err != nil {
			return err
		}
		return printCACert(cmd, out, asJSON)
	}
	return cmd
}

func hubCertDeleteCmd(cc *clientCmd) *cobra.Command {
	var hub, name, etag string
	cmd := &cobra.Command{Use: "delete", Short: "Delete a CA certificate: devices stop connecting through it", Args: cobra.NoArgs}
	certHubFlag(cmd, &hub)
	certNameFlag(cmd, &name)
	cmd.Flags().StringVarP(&etag, "etag", "e", "", "only if the certificate still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, err := cc.adminClient()
		if err != nil {
			return err
		}
		return c.DeleteCACertificate(cmd.Context(), hub, name, etag)
	}
	return cmd
}

func hubCertCodeCmd(cc *clientCmd) *cobra.Command {
	var hub, name, etag string
	cmd := &cobra.Command{
		Use:   "generate-verification-code",
		Short: "Generate the code a proof-of-possession certificate must carry as its subject CN",
		Args:  cobra.NoArgs,
	}
	certHubFlag(cmd, &hub)
	certNameFlag(cmd, &name)
	cmd.Flags().StringVarP(&etag, "etag", "e", "", "only if the certificate still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		out, err := c.GenerateVerificationCode(cmd.Context(), hub, name, etag)
		if err != nil {
			return err
		}
		return printCACert(cmd, out, asJSON)
	}
	return cmd
}

func hubCertVerifyCmd(cc *clientCmd) *cobra.Command {
	var hub, name, etag, path string
	cmd := &cobra.Command{
		Use:     "verify",
		Short:   "Prove possession of a CA certificate's key with a certificate it signed for the verification code",
		Example: `  dpsd hub certificate verify --hub-name contoso-toasters-hub-1098 -n toaster-ca --path verification.pem`,
		Args:    cobra.NoArgs,
	}
	certHubFlag(cmd, &hub)
	certNameFlag(cmd, &name)
	cmd.Flags().StringVarP(&path, "path", "p", "", "PEM file of the verification certificate")
	_ = cmd.MarkFlagRequired("path")
	cmd.Flags().StringVarP(&etag, "etag", "e", "", "only if the certificate still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		certPEM, err := readPEMFile(path)
		if err != nil {
			return err
		}
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		out, err := c.VerifyCACertificate(cmd.Context(), hub, name, etag, certPEM)
		if err != nil {
			return err
		}
		return printCACert(cmd, out, asJSON)
	}
	return cmd
}

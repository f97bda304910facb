package cli

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
)

const issuingCAsPath = "/dpsd/issuingCAs"

// newIssuingCACmd is "dpsd issuing-ca": the CAs that issue certificates
// to devices that send a certificate signing request.
func newIssuingCACmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "issuing-ca",
		Short: "Manage the CAs that issue certificates to devices sending a CSR (certificate issuance preview)",
		Long: `An enrollment or group whose clientCertificateIssuancePolicy names a CA
(--issuing-ca NAME on "dpsd enrollment create" and "dpsd enrollment-group
create") gives each device that sends a certificate signing request with
its registration an operational certificate signed by that CA. "local", the
node's own CA, is always there. "create" adds an intermediate CA of your
PKI with its private key, which dpsd keeps in its store.`,
		Args: cobra.NoArgs,
	}
	cf := addConnectFlags(cmd)
	out := addOutputFlag(cmd)
	ic := &issuingCACmd{&clientCmd{conn: cf, out: out}}
	cmd.AddCommand(ic.create(), ic.list(), ic.show(), ic.delete())
	return cmd
}

type issuingCACmd struct{ *clientCmd }

func issuingCAPath(name string) string { return issuingCAsPath + "/" + url.PathEscape(name) }

func (ic *issuingCACmd) create() *cobra.Command {
	var certFile, keyFile string
	cmd := &cobra.Command{
		Use:   "create NAME --certificate FILE --key FILE",
		Short: "Add or replace an issuing CA: its certificate (then its chain) and private key, PEM",
		Example: `  dpsd cert intermediate --ca root --out factory-ca
  dpsd issuing-ca create factory --certificate factory-ca.cert.pem --key factory-ca.key.pem`,
		Args: cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&certFile, "certificate", "", "PEM file: the CA certificate first, then the certificates above it")
	cmd.Flags().StringVar(&keyFile, "key", "", "PEM file of the CA's private key")
	_ = cmd.MarkFlagRequired("certificate")
	_ = cmd.MarkFlagRequired("key")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		certs, err := os.ReadFile(certFile)
		if err != nil {
			return fmt.Errorf("--certificate: %w", err)
		}
		key, err := os.ReadFile(keyFile)
		if err != nil {
			return fmt.Errorf("--key: %w", err)
		}
		c, asJSON, err := ic.extSetup()
		if err != nil {
			return err
		}
		var v admin.IssuingCA
		body := admin.IssuingCAPut{Certificates: string(certs), PrivateKey: string(key)}
		if err := c.do(cmd.Context(), fmt.Sprintf("create issuing CA %q", args[0]), http.MethodPut, issuingCAPath(args[0]), body, &v, ""); err != nil {
			return err
		}
		return printIssuingCA(cmd.OutOrStdout(), asJSON, &v)
	}
	return cmd
}

func (ic *issuingCACmd) show() *cobra.Command {
	cmd := &cobra.Command{Use: "show NAME", Short: "Show an issuing CA (never its key)", Args: cobra.ExactArgs(1)}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, asJSON, err := ic.extSetup()
		if err != nil {
			return err
		}
		var v admin.IssuingCA
		if err := c.do(cmd.Context(), fmt.Sprintf("show issuing CA %q", args[0]), http.MethodGet, issuingCAPath(args[0]), nil, &v, ""); err != nil {
			return err
		}
		return printIssuingCA(cmd.OutOrStdout(), asJSON, &v)
	}
	return cmd
}

func (ic *issuingCACmd) list() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List the issuing CAs, local first", Args: cobra.NoArgs}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := ic.extSetup()
		if err != nil {
			return err
		}
		var vs []admin.IssuingCA
		if err := c.do(cmd.Context(), "list issuing CAs", http.MethodGet, issuingCAsPath, nil, &vs, ""); err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), nonNil(vs))
		}
		rows := make([][]string, 0, len(vs))
		for _, v := range vs {
			rows = append(rows, []string{v.Name, printable(v.Subject), v.NotAfterUTC.Format(time.RFC3339), v.SHA256Thumbprint})
		}
		return table(cmd.OutOrStdout(), []string{"NAME", "SUBJECT", "NOT AFTER", "SHA-256"}, rows)
	}
	return cmd
}

func (ic *issuingCACmd) delete() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete an issuing CA (certificates it issued stay valid on their hubs until they expire)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, _, err := ic.extSetup()
		if err != nil {
			return err
		}
		return c.do(cmd.Context(), fmt.Sprintf("delete issuing CA %q", args[0]), http.MethodDelete, issuingCAPath(args[0]), nil, nil, "")
	}
	return cmd
}

func printIssuingCA(w io.Writer, asJSON bool, v *admin.IssuingCA) error {
	if asJSON {
		return writeJSON(w, v)
	}
	return details(w, []field{
		{"Name", v.Name},
		{"Subject", printable(v.Subject)},
		{"Issuer", printable(v.Issuer)},
		{"Not after", v.NotAfterUTC.Format(time.RFC3339)},
		{"SHA-256", v.SHA256Thumbprint},
		{"Selected with", "clientCertificateIssuancePolicy.certificateAuthorityName = " + v.Name},
	})
}

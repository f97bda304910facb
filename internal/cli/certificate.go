package cli

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/enroll"
)

// certificatesPath is the dpsd extension endpoint of CA certificates.
const certificatesPath = "/dpsd/certificates"

// newCertificateCmd is "dpsd certificate": the CA certificates that X.509
// enrollments name in caReferences, shaped like "az iot dps certificate".
// A certificate vouches for devices once verified: generate a verification
// code, sign a certificate with that code as CN with the CA's key, and send
// it back (verify --path), or let "verify --ca-key" do all three.
func newCertificateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "certificate",
		Short: "Manage the CA certificates of the provisioning service (X.509 caReferences)",
		Args:  cobra.NoArgs,
	}
	cc := &certificateCmd{newClientCmd(cmd)}
	cmd.AddCommand(cc.create(), cc.list(), cc.show(), cc.delete(), cc.generateCode(), cc.verify())
	return cmd
}

// certificateCmd builds the "dpsd certificate" subcommands.
type certificateCmd struct{ *clientCmd }

func certificatePath(name string, action ...string) string {
	p := certificatesPath + "/" + url.PathEscape(name)
	for _, a := range action {
		p += "/" + a
	}
	return p
}

func addNameFlag(cmd *cobra.Command, name *string) {
	cmd.Flags().StringVarP(name, "certificate-name", "n", "", "name of the CA certificate")
	_ = cmd.MarkFlagRequired("certificate-name")
}

func (cc *certificateCmd) create() *cobra.Command {
	var name, path string
	var verified bool
	cmd := &cobra.Command{
		Use:   "create --certificate-name NAME --path FILE",
		Short: "Upload a CA certificate (PEM or base64 DER file)",
		Args:  cobra.NoArgs,
	}
	addNameFlag(cmd, &name)
	cmd.Flags().StringVarP(&path, "path", "p", "", "file holding the CA certificate")
	cmd.Flags().BoolVar(&verified, "verified", false, "mark the certificate verified without proof of possession")
	_ = cmd.MarkFlagRequired("path")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		text, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		c, asJSON, err := cc.extSetup()
		if err != nil {
			return err
		}
		var out admin.Certificate
		body := certs.Body{Certificate: string(text), IsVerified: verified}
		if err := c.do(cmd.Context(), fmt.Sprintf("upload certificate %q", name), http.MethodPut, certificatePath(name), body, &out, ""); err != nil {
			return err
		}
		return printCertificate(cmd.OutOrStdout(), asJSON, &out)
	}
	return cmd
}

func (cc *certificateCmd) list() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Short: "List the CA certificates", Args: cobra.NoArgs}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.extSetup()
		if err != nil {
			return err
		}
		var out certs.List
		if err := c.do(cmd.Context(), "list certificates", http.MethodGet, certificatesPath, nil, &out, ""); err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), nonNil(out.Value))
		}
		rows := make([][]string, 0, len(out.Value))
		for _, v := range out.Value {
			rows = append(rows, []string{v.Name, v.Properties.Subject, strconv.FormatBool(v.Properties.IsVerified), v.Properties.Expiry.Format(time.RFC3339), v.Properties.Thumbprint})
		}
		return table(cmd.OutOrStdout(), []string{"NAME", "SUBJECT", "VERIFIED", "EXPIRY", "THUMBPRINT"}, rows)
	}
	return cmd
}

func (cc *certificateCmd) show() *cobra.Command {
	var name string
	cmd := &cobra.Command{Use: "show --certificate-name NAME", Short: "Show a CA certificate", Args: cobra.NoArgs}
	addNameFlag(cmd, &name)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.extSetup()
		if err != nil {
			return err
		}
		out, err := getCertificate(cmd.Context(), c, name)
		if err != nil {
			return err
		}
		return printCertificate(cmd.OutOrStdout(), asJSON, out)
	}
	return cmd
}

func getCertificate(ctx context.Context, c extClient, name string) (*admin.Certificate, error) {
	var out admin.Certificate
	if err := c.do(ctx, fmt.Sprintf("show certificate %q", name), http.MethodGet, certificatePath(name), nil, &out, ""); err != nil {
		return nil, err
	}
	return &out, nil
}

func (cc *certificateCmd) delete() *cobra.Command {
	var name, etag string
	cmd := &cobra.Command{Use: "delete --certificate-name NAME", Short: "Delete a CA certificate; enrollments naming it stop vouching for devices", Args: cobra.NoArgs}
	addNameFlag(cmd, &name)
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the certificate still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, err := cc.extSetup()
		if err != nil {
			return err
		}
		return c.do(cmd.Context(), fmt.Sprintf("delete certificate %q", name), http.MethodDelete, certificatePath(name), nil, nil, etag)
	}
	return cmd
}

func (cc *certificateCmd) generateCode() *cobra.Command {
	var name, etag string
	cmd := &cobra.Command{
		Use:   "generate-verification-code --certificate-name NAME",
		Short: "Issue a verification code: sign a certificate with it as CN with the CA's key, then verify",
		Args:  cobra.NoArgs,
	}
	addNameFlag(cmd, &name)
	cmd.Flags().StringVar(&etag, "etag", "", "only if the certificate still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.extSetup()
		if err != nil {
			return err
		}
		var out admin.Certificate
		if err := c.do(cmd.Context(), fmt.Sprintf("generate verification code for %q", name), http.MethodPost, certificatePath(name, "generateVerificationCode"), nil, &out, etag); err != nil {
			return err
		}
		return printCertificate(cmd.OutOrStdout(), asJSON, &out)
	}
	return cmd
}

func (cc *certificateCmd) verify() *cobra.Command {
	var name, etag, path, caKey string
	cmd := &cobra.Command{
		Use:   "verify --certificate-name NAME (--path FILE | --ca-key KEY.pem)",
		Short: "Prove possession of a CA's private key, which makes the certificate vouch for devices",
		Long: `Prove possession of a CA's private key.

With --path, send the verification certificate made for the current
verification code (subject CN = the code, signed by the CA's key), e.g. with
"dpsd cert verification". With --ca-key, do it all at once: get a new code,
sign the verification certificate with the key and send it.`,
		Args: cobra.NoArgs,
	}
	addNameFlag(cmd, &name)
	cmd.Flags().StringVarP(&path, "path", "p", "", "file holding the verification certificate")
	cmd.Flags().StringVar(&caKey, "ca-key", "", "the CA's private key (PEM): generate, sign and verify in one step")
	cmd.Flags().StringVar(&etag, "etag", "", "only if the certificate still has this etag")
	cmd.MarkFlagsOneRequired("path", "ca-key")
	cmd.MarkFlagsMutuallyExclusive("path", "ca-key")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.extSetup()
		if err != nil {
			return err
		}
		ctx := cmd.Context()
		var proof []byte
		if path != "" {
			if proof, err = os.ReadFile(path); err != nil {
				return err
			}
		} else {
			keyPEM, err := os.ReadFile(caKey)
			if err != nil {
				return err
			}
			key, err := certs.ParseKey(keyPEM)
			if err != nil {
				return err
			}
			var gen admin.Certificate
			if err := c.do(ctx, fmt.Sprintf("generate verification code for %q", name), http.MethodPost, certificatePath(name, "generateVerificationCode"), nil, &gen, etag); err != nil {
				return err
			}
			ca, err := enroll.ParseCertificate(gen.Properties.Certificate)
			if err != nil {
				return fmt.Errorf("certificate %q from the service: %w", name, err)
			}
			if !samePublicKey(ca, key) {
				return fmt.Errorf("the key in %s is not the key of certificate %q", caKey, name)
			}
			issued, err := (&certs.Issued{Cert: ca, Key: key}).Verification(gen.Properties.VerificationCode, certs.IssueOptions{Validity: time.Hour})
			if err != nil {
				return err
			}
			proof, etag = issued.CertPEM(), gen.ETag
		}
		var out admin.Certificate
		body := certs.Body{Certificate: string(proof)}
		if err := c.do(ctx, fmt.Sprintf("verify certificate %q", name), http.MethodPost, certificatePath(name, "verify"), body, &out, etag); err != nil {
			return err
		}
		return printCertificate(cmd.OutOrStdout(), asJSON, &out)
	}
	return cmd
}

func samePublicKey(c *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(c.PublicKey)
}

func printCertificate(w io.Writer, asJSON bool, c *admin.Certificate) error {
	if asJSON {
		return writeJSON(w, c)
	}
	if c == nil {
		return errors.New("the service answered no certificate")
	}
	p := c.Properties
	return details(w, []field{
		{"Name", c.Name},
		{"Subject", p.Subject},
		{"Verified", strconv.FormatBool(p.IsVerified)},
		{"Verification code", p.VerificationCode},
		{"Expiry", p.Expiry.UTC().Format(time.RFC3339)},
		{"Thumbprint (SHA-1)", p.Thumbprint},
		{"Thumbprint (SHA-256)", p.SHA256Thumbprint},
		{"ETag", c.ETag},
		{"Created", p.Created.UTC().Format(time.RFC3339)},
		{"Updated", p.Updated.UTC().Format(time.RFC3339)},
	})
}
